"""Out-of-distribution scores: how far an embedding lies from what a head was trained on.

- `mahalanobis` (default): the squared Mahalanobis distance to the nearest class mean, under
  one covariance shared by the classes (of the class-centred training embeddings), shrunk by
  Ledoit-Wolf so that a few hundred items in 1,280 dimensions give a usable inverse (Lee et
  al. 2018; OpenOOD's MDS).
- `knn`: the cosine distance to the k-th nearest training embedding (Sun et al. 2022); the
  bank is at most `bank` training embeddings, drawn at random.

Higher is more unusual. The threshold is calibrated on held-out folds: every training item is
scored by a scorer fitted without its fold, and the threshold is the `accept` quantile of those
scores (default 0.95: 95 % of in-distribution items accepted). The scorer kept is then fitted
on all items. Its parameters are arrays (saved as .npz beside the head, no pickle), and the
same few matrix products run in numpy here and in the published ONNX graph (ood_graph.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from sklearn.model_selection import StratifiedKFold

from embedder.core.vectors import unit_rows

OODKind = Literal["mahalanobis", "knn"]


@dataclass(frozen=True)
class OODConfig:
    kind: OODKind = "mahalanobis"
    accept: float = 0.95  # share of held-out in-distribution items the threshold accepts
    k: int = 5  # knn: the neighbour whose distance is the score
    bank: int = 4096  # knn: training embeddings kept at most
    folds: int = 5  # for calibrating the threshold
    seed: int = 0


DEFAULT = OODConfig()
MIN_PER_CLASS = 3  # so that every calibration fold trains on two or more items of each class


@dataclass
class OODScorer:
    kind: OODKind
    arrays: dict[str, np.ndarray]  # mahalanobis: means, whitening; knn: bank
    threshold: float
    k: int = 5
    calibration: dict = field(default_factory=dict)

    def score(self, X: np.ndarray) -> np.ndarray:
        return score(self.kind, self.arrays, np.asarray(X, np.float32), self.k)

    def unknown(self, X: np.ndarray) -> np.ndarray:
        return self.score(X) > self.threshold


def fit_arrays(kind: OODKind, X: np.ndarray, y: np.ndarray, config: OODConfig) -> dict:
    """The scorer's parameters from training embeddings X (n, d) and their labels."""
    X = np.asarray(X, np.float64)
    if kind == "knn":
        rng = np.random.default_rng(config.seed)
        keep = np.sort(rng.permutation(len(X))[: config.bank])
        return {"bank": unit_rows(X[keep]).astype(np.float32)}
    from sklearn.covariance import LedoitWolf

    classes = np.unique(y)
    means = np.stack([X[y == c].mean(axis=0) for c in classes])
    centred = X - means[np.searchsorted(classes, y)]
    covariance = LedoitWolf(assume_centered=True).fit(centred).covariance_
    eigenvalues, vectors = np.linalg.eigh(covariance)  # W W' = covariance^-1, W = V / sqrt(L)
    if eigenvalues.max() <= 0:
        raise ValueError("the items do not vary within any class (one distinct item each): "
                         "a Mahalanobis scorer has no covariance to measure by")  # fmt: skip
    whitening = vectors / np.sqrt(np.maximum(eigenvalues, eigenvalues.max() * 1e-10))
    return {"means": means.astype(np.float32), "whitening": whitening.astype(np.float32)}


def score(kind: OODKind, arrays: dict, X: np.ndarray, k: int = 5) -> np.ndarray:
    """Each row's score, computed as the ONNX graph computes it."""
    if kind == "knn":
        similarity = unit_rows(X) @ arrays["bank"].T
        kth = min(k, similarity.shape[1])
        return 1.0 - np.sort(similarity, axis=1)[:, -kth]
    z, m = X @ arrays["whitening"], arrays["means"] @ arrays["whitening"]
    distances = (z * z).sum(1, keepdims=True) - 2 * z @ m.T + (m * m).sum(1)
    return distances.min(axis=1)


def fit_ood(X: np.ndarray, y: np.ndarray, config: OODConfig = DEFAULT) -> OODScorer:
    """A scorer fitted on all of X, its threshold calibrated on held-out folds."""
    y = np.asarray(y)
    smallest = int(np.unique(y, return_counts=True)[1].min())
    folds = min(config.folds, smallest)
    if smallest < MIN_PER_CLASS:  # each calibration fold's scorer needs a spread per class
        raise ValueError(f"calibrating an OOD threshold needs {MIN_PER_CLASS} items of every "
                         f"class (the smallest has {smallest}); train with --ood none")  # fmt: skip
    held_out = np.empty(len(y), np.float64)
    splitter = StratifiedKFold(folds, shuffle=True, random_state=config.seed)
    fold_of = np.empty(len(y), int)
    for i, (train, test) in enumerate(splitter.split(X, y)):
        arrays = fit_arrays(config.kind, X[train], y[train], config)
        held_out[test] = score(config.kind, arrays, np.asarray(X[test], np.float32), config.k)
        fold_of[test] = i
    threshold = float(np.quantile(held_out, config.accept))
    per_fold = [float((held_out[fold_of == i] <= threshold).mean()) for i in range(folds)]
    calibration = {"accept_target": config.accept, "folds": folds, "items": len(y),
                   "held_out_accepted_per_fold": [round(a, 4) for a in per_fold]}  # fmt: skip
    arrays = fit_arrays(config.kind, X, y, config)
    return OODScorer(config.kind, arrays, threshold, config.k, calibration)


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """The chance that an out-of-distribution item scores above an in-distribution one."""
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    return float(roc_auc_score(labels, np.r_[inside, outside]))


def fpr_at_tpr(inside: np.ndarray, outside: np.ndarray, tpr: float = 0.95) -> float:
    """The share of out-of-distribution items accepted when `tpr` of in-distribution are."""
    return float((outside <= np.quantile(inside, tpr)).mean())
