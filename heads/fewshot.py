"""Few-shot curves: accuracy at k examples per class, backbone features vs a from-scratch baseline.

The same draws and the same test split feed both, so the plot answers the two questions of
transfer learning: does the backbone start higher, and does it end higher? Where the baseline
wins, the report says "negative transfer" in words - the classic failure a tool must not hide.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import scipy.sparse
from sklearn.model_selection import train_test_split

from .ood import MIN_PER_CLASS, OODConfig, fit_ood
from .train import DEFAULT_CONFIG, HeadConfig, check_features, check_labels, train_head

# (train indices, test indices) -> (train features, test features), fitted on train only
Baseline = Callable[[np.ndarray, np.ndarray], tuple[object, object]]


def pixel_baseline(pixels: np.ndarray) -> Baseline:
    """Raw pixels, flattened (the head standardises them)."""
    flat = np.asarray(pixels, np.float32).reshape(len(pixels), -1)
    return lambda train, test: (flat[train], flat[test])


def tfidf_baseline(texts: list[str]) -> Baseline:
    """TF-IDF of word uni- and bigrams, the vocabulary learnt from the training draw only."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = np.asarray(texts, dtype=object)

    def features(train, test):
        vec = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)
        return vec.fit_transform(texts[train]), vec.transform(texts[test])

    return features


@dataclass
class CurvePoint:
    k: int | str
    mean: float
    std: float
    baseline_mean: float
    baseline_std: float
    draws: int
    # With an OOD scorer: the share of held-out in-distribution items its threshold, fitted and
    # calibrated on the k examples alone, accepts (target 0.95); None where k is too small.
    ood_accepted: float | None = None


@dataclass
class Curve:
    name: str
    baseline: str
    n_test: int
    points: list[CurvePoint]

    @property
    def negative_at(self) -> list[int | str]:
        return [p.k for p in self.points if p.baseline_mean > p.mean]

    def verdict(self) -> str:
        neg = self.negative_at
        if not neg:
            return f"positive transfer: {self.name} beats {self.baseline} at every k"
        worst = max((p for p in self.points if p.k in neg), key=lambda p: p.baseline_mean - p.mean)
        return (
            f"NEGATIVE TRANSFER at k = {', '.join(map(str, neg))}: {self.baseline} beats "
            f"{self.name} (worst at k={worst.k}: {100 * worst.baseline_mean:.1f}% vs "
            f"{100 * worst.mean:.1f}%). The backbone's features fit this data worse than "
            "its raw inputs there; try another backbone or cut layer, or more examples."
        )

    def table(self) -> str:
        ood = any(p.ood_accepted is not None for p in self.points)
        extra = (" in-distribution accepted by the OOD threshold |", "---|") if ood else ("", "")
        rows = [f"| k per class | {self.name} | {self.baseline} | verdict |{extra[0]}",
                f"|---|---|---|---|{extra[1]}"]  # fmt: skip
        for p in self.points:
            flag = "negative transfer" if p.baseline_mean > p.mean else ""
            accepted = ""
            if ood:
                accepted = " - |" if p.ood_accepted is None else f" {100 * p.ood_accepted:.1f} % |"
            rows.append(
                f"| {p.k} | {100 * p.mean:.1f} ± {100 * p.std:.1f} | "
                f"{100 * p.baseline_mean:.1f} ± {100 * p.baseline_std:.1f} | {flag} |{accepted}"
            )
        return "\n".join(rows)

    def to_json(self) -> str:
        return json.dumps(
            asdict(self) | {"negative_at": self.negative_at, "verdict": self.verdict()}, indent=2
        )


def default_ks(smallest_class: int) -> list[int]:
    ks = [k for k in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if k < smallest_class]
    return ks


def _draw(rng: np.random.Generator, pool: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    picks = [rng.choice(pool[y[pool] == c], size=k, replace=False) for c in np.unique(y[pool])]
    return np.concatenate(picks)


def _score(X, y, train, test, config) -> float:
    head = train_head(X[train], y[train], config, few_shot=True)
    return float((head.predict(X[test]) == y[test]).mean())


def few_shot_curve(
    X,
    y,
    baseline: Baseline,
    name: str = "backbone",
    baseline_name: str = "baseline",
    ks: list[int] | None = None,
    draws: int = 5,
    test_size: float = 0.5,
    config: HeadConfig = DEFAULT_CONFIG,
    baseline_config: HeadConfig | None = None,
    seed: int = 0,
    baseline_of: Curve | None = None,
    ood: OODConfig | None = None,
) -> Curve:
    """`baseline_of`: a curve drawn on the same labels, ks and seed, whose baseline figures
    are taken instead of computed again (the baseline does not depend on X). `ood`: fit and
    calibrate that scorer on each draw too, and report how much of the test set it accepts."""
    X = check_features(X)
    y = check_labels(y, folds=2)
    idx = np.arange(len(y))
    pool, test = train_test_split(idx, test_size=test_size, stratify=y, random_state=seed)
    smallest = int(np.unique(y[pool], return_counts=True)[1].min())
    ks = [k for k in (ks or default_ks(smallest)) if k <= smallest]
    base_cfg = baseline_config or config
    points = []
    for i, k in enumerate([*ks, "all"]):
        ours, theirs, accepted = [], [], []
        for d in range(1 if k == "all" else draws):
            train = pool if k == "all" else _draw(np.random.default_rng([seed, d, k]), pool, y, k)
            ours.append(_score(X, y, train, test, config))
            if ood is not None and (k == "all" or k >= MIN_PER_CLASS):
                scorer = fit_ood(X[train], y[train], ood)
                accepted.append(float((~scorer.unknown(X[test])).mean()))
            if baseline_of is None:
                Xb_train, Xb_test = baseline(train, test)
                sparse = scipy.sparse.issparse(Xb_train)  # TF-IDF: cannot be centred
                cfg = replace(base_cfg, scaling="none") if sparse else base_cfg
                head = train_head(Xb_train, y[train], cfg, few_shot=True)
                theirs.append(float((head.predict(Xb_test) == y[test]).mean()))
        known = baseline_of.points[i] if baseline_of is not None else None
        points.append(
            CurvePoint(
                k,
                float(np.mean(ours)),
                float(np.std(ours)),
                known.baseline_mean if known else float(np.mean(theirs)),
                known.baseline_std if known else float(np.std(theirs)),
                len(ours),
                float(np.mean(accepted)) if accepted else None,
            )
        )
    return Curve(name, baseline_name, len(test), points)


def plot_curve(curve: Curve, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numeric = [p for p in curve.points if p.k != "all"]
    all_point = next((p for p in curve.points if p.k == "all"), None)
    xs = [p.k for p in numeric]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, mean, std, color in (
        (curve.name, [p.mean for p in numeric], [p.std for p in numeric], "tab:blue"),
        (
            curve.baseline,
            [p.baseline_mean for p in numeric],
            [p.baseline_std for p in numeric],
            "tab:orange",
        ),
    ):
        mean, std = np.array(mean), np.array(std)
        ax.plot(xs, mean, "o-", label=label, color=color)
        ax.fill_between(xs, mean - std, mean + std, alpha=0.2, color=color)
    if all_point:
        ax.axhline(all_point.mean, ls="--", color="tab:blue", lw=1, label=f"{curve.name}, all")
        ax.axhline(
            all_point.baseline_mean,
            ls="--",
            color="tab:orange",
            lw=1,
            label=f"{curve.baseline}, all",
        )
    for k in curve.negative_at:
        if k != "all":
            ax.axvline(k, color="red", alpha=0.15, lw=8)
    ax.set_xscale("log")
    ax.set_xlabel("examples per class (k)")
    ax.set_ylabel(f"test accuracy (n={curve.n_test})")
    ax.set_title(curve.verdict().split(":")[0], fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
