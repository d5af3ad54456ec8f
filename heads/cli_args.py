"""What the embedder-heads commands share: reading a cached feature set, folds and OOD flags,
grey thumbnails for the raw-pixel baseline."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def load_set(path: Path):
    """Features of a cache dataset folder or a run file, and the dataset's identity (+ digest)."""
    from embedder.cache import dataset_folder, load_features, read_identity

    features = load_features(path)
    meta = read_identity(path) | {"digest": dataset_folder(path).name}
    return features, meta


def at_least_2(text: str) -> int:
    if not text.isdigit() or int(text) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: folds must be an integer >= 2")
    return int(text)


def ood_config(args: argparse.Namespace):
    """The OOD scorer `--ood` asks for (None for `none`)."""
    from .ood import OODConfig

    return None if args.ood == "none" else OODConfig(args.ood, seed=args.seed)


def grey_pixels(sources, size: int) -> np.ndarray:
    """Each image file as grey `size` x `size` pixels: the raw-pixel baseline's input."""
    from PIL import Image

    return np.stack([np.asarray(Image.open(s).convert("L").resize((size, size))) for s in sources])
