"""Rank feature sets of the same labelled data (one per backbone or cut layer) by CV score."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .crossval import cross_predict, fold_accuracies, outer_folds
from .errors import LabelError
from .train import DEFAULT_CONFIG, HeadConfig, check_labels


@dataclass
class Ranked:
    name: str
    dim: int
    mean: float
    std: float
    C: list[float]


def align(feature_sets: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]):
    """Keep the keys every set has, in one order: {name: X}, y."""
    common = set.intersection(*(set(keys) for _, _, keys in feature_sets.values()))
    if not common:
        raise ValueError("the feature sets share no input; embed the same data with each model")
    order = sorted(common)
    aligned, y = {}, None
    for name, (X, labels, keys) in feature_sets.items():
        if labels is None:
            raise LabelError(f"{name} has no labels; export it with labels")
        row = {k: i for i, k in enumerate(keys)}
        idx = [row[k] for k in order]
        aligned[name] = X[idx]
        if y is not None and not np.array_equal(labels[idx], y):
            raise LabelError(f"{name} labels the same inputs differently from the first set")
        y = labels[idx] if y is None else y
    return aligned, y


def compare(
    feature_sets: dict[str, np.ndarray], y, config: HeadConfig = DEFAULT_CONFIG, folds: int = 5
) -> list[Ranked]:
    """Same outer folds for every set; C tuned inside each training fold."""
    y = check_labels(y, folds)
    splits = outer_folds(y, folds, config.seed)
    ranked = []
    for name, X in feature_sets.items():
        predicted, Cs = cross_predict(X, y, splits, config)
        scores = fold_accuracies(y, predicted, splits)
        ranked.append(Ranked(name, X.shape[1], float(np.mean(scores)), float(np.std(scores)), Cs))
    return sorted(ranked, key=lambda r: -r.mean)


def table(ranked: list[Ranked]) -> str:
    rows = ["| rank | features | dim | CV accuracy | ± std |", "|---|---|---|---|---|"]
    for i, r in enumerate(ranked, 1):
        rows.append(f"| {i} | {r.name} | {r.dim} | {100 * r.mean:.2f} | {100 * r.std:.2f} |")
    return "\n".join(rows)
