"""Which backbone, which layers, which head: screened by LogME, decided by cross-validation.

1. Every feature set (heads/candidates.py) is scored by LogME, closed form, no training.
2. Joined pairs: the best set of each of the `pairs` best backbones, two at a time.
3. The `top` sets by LogME, and every backbone's default cut, are cross-validated with a
   logistic-regression head on the same outer folds (C tuned inside each training part); the
   `svm_top` best of them with a linear SVM too (an SVM fit costs 5-10x a warm-started
   logistic one). The winner is the best cross-validated candidate, so it is never worse
   than a default cut; Kendall's tau between LogME and CV says how far the screen held.
4. Few-shot curves of the best `curves` candidates against a from-scratch baseline.

A score may only order candidates (a 2025 critique of transferability metrics shows they can
mislead); what is reported as the answer is always measured by CV.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field, replace

import numpy as np

from .candidates import FeatureSet, concatenated
from .crossval import cross_predict, fold_accuracies, outer_folds
from .fewshot import Baseline, Curve, few_shot_curve
from .logme import logme
from .train import HeadConfig, HeadKind, check_labels


@dataclass(frozen=True)
class AdviseConfig:
    folds: int = 5  # outer folds, the same for every candidate
    inner_folds: int = 3  # C is chosen inside each training part, on these
    logreg_grid: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
    svm_grid: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
    top: int = 3  # sets cross-validated by rank of LogME, besides the default cuts
    svm_top: int = 2  # of those, the best given a linear SVM head too
    pairs: int = 3  # backbones whose best sets are joined two at a time
    curves: int = 3  # candidates given a few-shot curve
    ks: tuple[int, ...] = (1, 2, 5, 10, 20)
    draws: int = 5
    seed: int = 0
    jobs: int = 0  # processes for cross-validation and curves (0: one per core)

    def head(self, kind: HeadKind) -> HeadConfig:
        grid = self.logreg_grid if kind == "logreg" else self.svm_grid
        return HeadConfig(
            kind=kind, folds=self.inner_folds, coarse_grid=grid, fine_steps=0, seed=self.seed
        )


@dataclass(eq=False)
class Candidate:
    features: FeatureSet
    logme: float
    head: HeadKind | None = None  # None: screened only
    cv_accuracy: float | None = None
    cv_std: float | None = None
    C: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        f = self.features
        return {
            "features": f.name,
            "backbones": f.models,
            "layers": [f"{p.model}:{p.layer}" for p in f.parts],
            "head": self.head,
            "dim": f.dim,
            "cv_accuracy": self.cv_accuracy,
            "cv_std": self.cv_std,
            "logme": round(self.logme, 5),
            "forward_passes": f.passes,
            "ms_per_item": round(f.ms_per_item, 2),
            "default_cut": f.is_default_cut,
            "C": self.C,
        }


@dataclass
class Advice:
    candidates: list[Candidate]  # cross-validated best first, then screened only, by LogME
    n_items: int
    classes: list[str]
    kendall_tau: float | None  # LogME against CV accuracy, over the cross-validated sets
    curves: list[Curve]
    seconds: dict[str, float]

    @property
    def winner(self) -> Candidate:
        return self.candidates[0]

    @property
    def default_cuts(self) -> list[Candidate]:
        return [c for c in self.candidates if c.features.is_default_cut and c.head == "logreg"]


def advise(
    sets: dict[str, list[FeatureSet]],
    y: np.ndarray,
    baseline: Baseline,
    baseline_name: str,
    config: AdviseConfig = AdviseConfig(),
) -> Advice:
    """`sets`: each backbone's candidate feature sets, rows aligned with `y`."""
    y = check_labels(y, config.folds)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    screened = {id(s): Candidate(s, logme(s.X, y)) for group in sets.values() for s in group}
    for pair in joined_pairs(sets, screened, config.pairs):
        screened[id(pair)] = Candidate(pair, logme(pair.X, y))
    seconds["LogME screen"] = time.perf_counter() - started
    started = time.perf_counter()
    chosen = to_cross_validate(list(screened.values()), config.top)
    splits = outer_folds(y, config.folds, config.seed)
    measured = cross_validated(chosen, "logreg", y, splits, config)
    by_accuracy = sorted(measured, key=lambda c: -c.cv_accuracy)
    measured += cross_validated(by_accuracy[: config.svm_top], "linear_svc", y, splits, config)
    seconds["cross-validation"] = time.perf_counter() - started
    ranked = sorted(measured, key=lambda c: (-c.cv_accuracy, c.features.ms_per_item))
    cross_validated_ids = {id(c) for c in chosen}
    rest = sorted(
        (c for c in screened.values() if id(c) not in cross_validated_ids), key=lambda c: -c.logme
    )
    started = time.perf_counter()
    curves = few_shot_curves(ranked, y, baseline, baseline_name, config)
    seconds["few-shot curves"] = time.perf_counter() - started
    return Advice(
        ranked + rest,
        len(y),
        [str(c) for c in np.unique(y)],
        rank_agreement(chosen, measured),
        curves,
        seconds,
    )


def joined_pairs(
    sets: dict[str, list[FeatureSet]], screened: dict[int, Candidate], count: int
) -> list[FeatureSet]:
    """The best set (by LogME) of each of the `count` best backbones, joined two at a time."""
    best = [max(group, key=lambda s: screened[id(s)].logme) for group in sets.values() if group]
    best.sort(key=lambda s: -screened[id(s)].logme)
    return [concatenated([a, b]) for a, b in itertools.combinations(best[:count], 2)]


def to_cross_validate(screened: list[Candidate], top: int) -> list[Candidate]:
    by_score = sorted(screened, key=lambda c: -c.logme)
    chosen = by_score[:top] + [c for c in by_score[top:] if c.features.is_default_cut]
    return chosen


def parallel(function, arguments: list[tuple], jobs: int) -> list:
    """`function` over `arguments` in worker processes (each fit is single-threaded)."""
    from joblib import Parallel, delayed

    workers = min(len(arguments), jobs or len(os.sched_getaffinity(0))) or 1
    return Parallel(n_jobs=workers)(delayed(function)(*a) for a in arguments)


def _fold_scores(X: np.ndarray, y: np.ndarray, splits, head: HeadConfig):
    predicted, Cs = cross_predict(X, y, splits, head)
    scores = fold_accuracies(y, predicted, splits)
    return float(np.mean(scores)), float(np.std(scores)), Cs


def cross_validated(
    screened: list[Candidate], kind: HeadKind, y: np.ndarray, splits, config: AdviseConfig
) -> list[Candidate]:
    """The candidates with a `kind` head's CV accuracy on `splits` (C tuned inside)."""
    arguments = [(c.features.X, y, splits, config.head(kind)) for c in screened]
    scores = parallel(_fold_scores, arguments, config.jobs)
    return [
        replace(c, head=kind, cv_accuracy=mean, cv_std=std, C=Cs)
        for c, (mean, std, Cs) in zip(screened, scores, strict=True)
    ]


def rank_agreement(chosen: list[Candidate], measured: list[Candidate]) -> float | None:
    """Kendall's tau between each cross-validated set's LogME and its best CV accuracy."""
    from scipy.stats import kendalltau

    best = {}
    for c in measured:
        key = id(c.features)
        best[key] = max(best.get(key, -1.0), c.cv_accuracy)
    if len(chosen) < 3:
        return None
    tau = kendalltau([c.logme for c in chosen], [best[id(c.features)] for c in chosen])
    return None if np.isnan(tau.statistic) else float(tau.statistic)


def few_shot_curves(
    ranked: list[Candidate],
    y: np.ndarray,
    baseline: Baseline,
    baseline_name: str,
    config: AdviseConfig,
) -> list[Curve]:
    """k examples per class, the best candidates (one per feature set) against the baseline
    (drawn once: every curve draws the same examples)."""
    seen, best = set(), []
    for c in ranked:
        if id(c.features) not in seen and len(best) < config.curves:
            seen.add(id(c.features))
            best.append(c)
    if not best:
        return []

    def arguments(c: Candidate, baseline_of: Curve | None) -> tuple:
        return (
            c.features.X,
            y,
            baseline,
            c.features.name,
            baseline_name,
            list(config.ks),
            config.draws,
            0.5,
            config.head(c.head),
            None,
            config.seed,
            baseline_of,
        )

    first = few_shot_curve(*arguments(best[0], None))
    rest = [arguments(c, first) for c in best[1:]]
    return [first, *(parallel(few_shot_curve, rest, config.jobs) if rest else [])]
