"""Row-wise vector arithmetic used everywhere a vector is compared or normalised."""

from __future__ import annotations

import numpy as np

EPSILON = 1e-12  # a zero vector stays zero instead of dividing by zero


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row scaled to unit L2 length (zero rows stay zero), in x's dtype."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), EPSILON).astype(x.dtype)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The cosine similarity of each row of `a` with the same row of `b`, in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(norms, EPSILON)
