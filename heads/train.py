"""Train a head on embeddings: a scikit-learn Pipeline, C chosen by stratified CV.

The C search follows the CLIP linear-probe protocol: a coarse log grid, then a finer grid
around the best coarse value, then a refit on all training data. BLAS threads are limited to
one per fit (threadpoolctl): on a small machine two OpenBLAS pools fighting each other make a
3 s fit take 40 s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import scipy.sparse
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import SVC, LinearSVC
from threadpoolctl import threadpool_limits

from .errors import FeatureError, LabelError

HeadKind = Literal["logreg", "linear_svc", "rbf_svc"]
Scaling = Literal["standard", "l2", "none"]


@dataclass(frozen=True)
class HeadConfig:
    kind: HeadKind = "logreg"
    scaling: Scaling = "standard"
    class_weight: Literal["balanced"] | None = None
    folds: int = 5
    coarse_grid: tuple[float, ...] = tuple(10.0 ** np.arange(-4, 5))  # 1e-4 .. 1e4
    fine_steps: int = 5  # points between the best coarse value's neighbours
    seed: int = 0
    max_iter: int = 1000
    tol: float = 1e-3


DEFAULT_CONFIG = HeadConfig()


@dataclass
class TrainedHead:
    pipeline: Pipeline
    classes: np.ndarray
    C: float
    cv_scores: dict[float, float]  # C -> mean CV accuracy
    config: HeadConfig
    fit_seconds: float
    fits: int

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.pipeline.predict(check_features(X))


def check_features(X):
    """(N, D) finite float32; a scipy sparse matrix (TF-IDF) is checked on its stored values."""
    if scipy.sparse.issparse(X):
        if not np.isfinite(X.data).all():
            raise FeatureError("sparse features contain NaN or inf")
        return X.astype(np.float32).tocsr()
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise FeatureError(f"features must be (N, D), got shape {X.shape}")
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise FeatureError(f"{bad.sum()} rows contain NaN or inf (first: {rows}); re-export them")
    return X


def check_labels(y, folds: int) -> np.ndarray:
    if y is None:
        raise LabelError("no labels: export with --labels-from-folders or --label-column")
    y = np.asarray(y)
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise LabelError(f"need at least two classes, got {classes.tolist()}")
    if folds > 1 and counts.min() < folds:
        small = {str(c): int(n) for c, n in zip(classes, counts, strict=True) if n < folds}
        raise LabelError(
            f"classes {small} have fewer examples than the {folds} CV folds; "
            "add examples or lower --folds"
        )
    return y


def build_pipeline(config: HeadConfig, C: float) -> Pipeline:
    scale = {"standard": StandardScaler(), "l2": Normalizer(), "none": "passthrough"}[
        config.scaling
    ]
    if config.kind == "logreg":
        model = LogisticRegression(
            C=C,
            max_iter=config.max_iter,
            tol=config.tol,
            class_weight=config.class_weight,
            random_state=config.seed,
        )
    elif config.kind == "linear_svc":
        model = LinearSVC(
            C=C,
            max_iter=config.max_iter * 5,
            tol=config.tol,
            class_weight=config.class_weight,
            random_state=config.seed,
        )
    else:
        model = SVC(C=C, kernel="rbf", gamma="scale", class_weight=config.class_weight)
    return Pipeline([("scale", scale), ("head", model)])


def row_space(X: np.ndarray) -> np.ndarray | None:
    """An orthonormal basis (d, r) of the span of X's rows when X has more columns than rows,
    else None. A linear head with an L2 penalty has its weights in that span (the representer
    theorem), so fitted on X @ basis it predicts as fitted on X: the same model, fitted on r
    columns instead of d (1,000 items of 3,072 features: 800 columns in each training part)."""
    if scipy.sparse.issparse(X) or X.shape[1] <= X.shape[0]:
        return None
    X = np.asarray(X, np.float64)
    eigenvalues, U = np.linalg.eigh(X @ X.T)  # 5x faster than an SVD of X for these shapes
    keep = eigenvalues > eigenvalues.max() * 1e-10
    return X.T @ (U[:, keep] / np.sqrt(eigenvalues[keep]))


def _linear(config: HeadConfig) -> bool:
    return config.kind in ("logreg", "linear_svc")


def _cv_scores(X, y, config: HeadConfig, grid: list[float]) -> dict[float, float]:
    """Mean stratified-CV accuracy per C; along the ascending C path a fit warm-starts."""
    folds = StratifiedKFold(config.folds, shuffle=True, random_state=config.seed)
    scores = {C: [] for C in grid}
    for train, test in folds.split(X, y):
        pipe = build_pipeline(config, grid[0])
        scaler = (
            clone(pipe.named_steps["scale"]) if pipe.named_steps["scale"] != "passthrough" else None
        )
        Xtr = scaler.fit_transform(X[train]) if scaler else X[train]
        Xte = scaler.transform(X[test]) if scaler else X[test]
        model = pipe.named_steps["head"]
        if _linear(config) and (basis := row_space(Xtr)) is not None:
            Xtr, Xte = Xtr @ basis, Xte @ basis
            _in_row_space(model)
        if config.kind == "logreg":
            model.set_params(warm_start=True)
        for C in sorted(grid):
            model.set_params(C=C)
            model.fit(Xtr, y[train])
            scores[C].append(float((model.predict(Xte) == y[test]).mean()))
    return {C: float(np.mean(s)) for C, s in scores.items()}


def _in_row_space(model) -> None:
    """A linear SVM on as many columns as rows: its dual solver (sklearn's "auto" would take
    the primal one there, 20x slower at C = 0.1 on 533 x 533)."""
    if isinstance(model, LinearSVC):
        model.set_params(dual=True)


def _fit(config: HeadConfig, C: float, X, y) -> Pipeline:
    """The pipeline fitted on all of X; a linear head on more columns than rows is fitted in
    their row space and its weights written back in X's columns (the same model)."""
    pipeline = build_pipeline(config, C)
    scale, model = pipeline.named_steps["scale"], pipeline.named_steps["head"]
    scaled = X if scale == "passthrough" else scale.fit_transform(X)
    basis = row_space(scaled) if _linear(config) else None
    if basis is None:
        return pipeline.fit(X, y)
    _in_row_space(model)
    model.fit(scaled @ basis, y)
    model.coef_ = model.coef_ @ basis.T
    model.n_features_in_ = X.shape[1]
    return pipeline


def _fine_grid(coarse: list[float], best: float, steps: int) -> list[float]:
    i = coarse.index(best)
    lo = coarse[max(i - 1, 0)]
    hi = coarse[min(i + 1, len(coarse) - 1)]
    grid = np.geomspace(lo, hi, steps + 2)[1:-1] if hi > lo else np.array([])
    return [float(c) for c in grid if not np.isclose(c, coarse).any()]


def train_head(
    X: np.ndarray, y, config: HeadConfig = DEFAULT_CONFIG, few_shot: bool = False
) -> TrainedHead:
    """Choose C by CV (coarse, then fine), refit on everything, return the fitted head.

    A class with fewer examples than folds is an error, unless `few_shot`: then CV uses as
    many folds as the smallest class allows, and with one example per class (nothing to
    validate on) C is 1.
    """
    X = check_features(X)
    y = check_labels(y, folds=0 if few_shot else config.folds)
    smallest = int(np.unique(y, return_counts=True)[1].min())
    if smallest < 2:
        started = time.perf_counter()
        with threadpool_limits(limits=1):
            pipeline = _fit(config, 1.0, X, y)
        return TrainedHead(
            pipeline, pipeline.classes_, 1.0, {}, config, time.perf_counter() - started, 1
        )
    if smallest < config.folds:
        config = replace(config, folds=smallest)
    started = time.perf_counter()
    with threadpool_limits(limits=1):
        coarse = sorted(float(c) for c in config.coarse_grid)
        scores = _cv_scores(X, y, config, coarse)
        best = max(coarse, key=lambda c: (scores[c], -c))  # ties: the most regularised
        fine = _fine_grid(coarse, best, config.fine_steps)
        if fine:
            scores |= _cv_scores(X, y, config, fine)
        best = max(scores, key=lambda c: (scores[c], -c))
        pipeline = _fit(config, best, X, y)
    fits = len(scores) * config.folds + 1
    return TrainedHead(
        pipeline,
        pipeline.classes_,
        best,
        dict(sorted(scores.items())),
        config,
        time.perf_counter() - started,
        fits,
    )
