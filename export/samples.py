"""Real inputs for parity and sanity checks, from packages that ship them (nothing downloads)."""

from __future__ import annotations

import numpy as np

from embedder.core.manifest import ImagePreprocess

SAMPLE_SENTENCES = (
    "A cup of espresso on a wooden table.",
    "The cat is sleeping on the sofa.",
    "A kitten naps on the couch.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "The striker scored twice in the second half to win the cup final.",
    "Astronauts prepare for a launch to the international space station.",
    "Short.",
)


def sample_photos() -> dict[str, np.ndarray]:
    """RGB uint8 photos: skimage's coffee, chelsea, astronaut, rocket; sklearn's china, flower."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = {name: getattr(skimage.data, name)() for name in ("coffee", "chelsea", "astronaut")}
    photos["rocket"] = skimage.data.rocket()
    bunch = load_sample_images()
    for filename, image in zip(bunch.filenames, bunch.images, strict=True):
        photos[filename.rsplit("/", 1)[-1].split(".")[0]] = image
    return photos


CALIBRATION_PHOTOS = (
    "astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "colorwheel",
    "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "microaneurysms", "moon",
    "page", "retina", "rocket", "text", "logo",
)  # fmt: skip


def calibration_photos() -> list[np.ndarray]:
    """RGB uint8 photos for quantisation choices: skimage's bundled images (the sample photos
    among them) and sklearn's; none of them is in a fidelity probe set."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = []
    for name in CALIBRATION_PHOTOS:
        image = np.asarray(getattr(skimage.data, name)())
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        photos.append(np.ascontiguousarray(image[..., :3]))  # (logo has an alpha channel)
    return photos + list(load_sample_images().images)


def sample_pixels(cfg: ImagePreprocess) -> tuple[list[str], np.ndarray]:
    """The sample photos preprocessed exactly as the server will: (N, H, W, 3) uint8."""
    from embedder.core.preprocess import image_to_pixels

    photos = sample_photos()
    return list(photos), np.stack([image_to_pixels(img, cfg) for img in photos.values()])
