"""Outer cross-validation folds and out-of-fold predictions: what `evaluate` reports on and
`compare` ranks feature sets by (C is tuned inside each training part by `train_head`)."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedKFold

from .train import HeadConfig, train_head

Split = tuple[np.ndarray, np.ndarray]  # (train rows, test rows)


def outer_folds(y: np.ndarray, folds: int, seed: int) -> list[Split]:
    """Stratified, shuffled folds: the same ones for every feature set of the same labels."""
    return list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(y, y))


def cross_predict(X: np.ndarray, y: np.ndarray, splits: list[Split],
                  config: HeadConfig) -> tuple[np.ndarray, list[float]]:  # fmt: skip
    """Each item's prediction by a head trained without its fold, and each fold's chosen C."""
    predicted = np.empty_like(y)
    Cs = []
    for train, test in splits:
        head = train_head(X[train], y[train], config)
        predicted[test] = head.predict(X[test])
        Cs.append(head.C)
    return predicted, Cs


def fold_accuracies(y: np.ndarray, predicted: np.ndarray, splits: list[Split]) -> list[float]:
    return [float((predicted[test] == y[test]).mean()) for _, test in splits]
