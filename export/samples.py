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
    "brick",
    "camera",
    "cell",
    "clock",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "microaneurysms",
    "moon",
    "page",
    "retina",
    "text",
    "logo",
)  # fmt: skip  (skimage's bundled images but the sample photos)


def calibration_photos() -> list[np.ndarray]:
    """RGB uint8 photos for quantisation choices: skimage's bundled images and its stereo pair,
    none of them a sample photo (whose cosines the export table reports) or in a probe set."""
    import skimage.data

    photos = []
    for name in CALIBRATION_PHOTOS:
        image = np.asarray(getattr(skimage.data, name)())
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        photos.append(np.ascontiguousarray(image[..., :3]))  # (logo has an alpha channel)
    left, right, _ = skimage.data.stereo_motorcycle()
    return [*photos, left, right]


def photo_crops(cfg: ImagePreprocess, count: int, photos: list[np.ndarray],
                seed: int = 0) -> np.ndarray:  # fmt: skip
    """Random crops of the photos, preprocessed as served: a quarter to all of a photo's sides,
    each turned gray with probability 0.3 and shrunk to an 8-40 pixel thumbnail first with
    probability 0.3, so that calibration ranges cover small, flat inputs as well as detailed
    ones. (N, H, W, 3) uint8."""
    from PIL import Image

    from embedder.core.preprocess import image_to_pixels

    rng, crops = np.random.default_rng(seed), []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = rng.uniform(0.25, 1.0)
        ch, cw = max(16, int(h * side)), max(16, int(w * side))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = photo[top : top + ch, left : left + cw]
        if rng.random() < 0.3:
            crop = np.repeat(crop.mean(-1, keepdims=True).astype(np.uint8), 3, axis=-1)
        if rng.random() < 0.3:
            thumb = int(rng.integers(8, 41))
            crop = np.asarray(Image.fromarray(crop).resize((thumb, thumb)))
        crops.append(image_to_pixels(crop, cfg))
    return np.stack(crops)


def sample_pixels(cfg: ImagePreprocess) -> tuple[list[str], np.ndarray]:
    """The sample photos preprocessed exactly as the server will: (N, H, W, 3) uint8."""
    from embedder.core.preprocess import image_to_pixels

    photos = sample_photos()
    return list(photos), np.stack([image_to_pixels(img, cfg) for img in photos.values()])
