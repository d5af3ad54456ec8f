"""How well a head's OOD scorer tells its own data from other data (`embedder-heads evaluate
--ood`): the labelled features split in two, the scorer fitted and calibrated on one half, the
other half and each out-of-distribution set scored; every figure the mean over several random
splits.

Per set: AUROC (in-distribution held out against the set), the share of the set accepted at
the calibrated threshold, and the share accepted when 95 % of the held-out half is (FPR at
95 % TPR, threshold-free). The held-out half's own acceptance says whether the calibration
held (target: `accept`, 0.95 by default).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from .cli_args import load_set
from .errors import HeadError
from .ood import OODConfig, auroc, fit_ood, fpr_at_tpr

DEFAULT = OODConfig()


@dataclass
class OODSetReport:
    name: str
    items: int
    auroc: float
    accepted: float  # at the calibrated threshold
    fpr_at_95_tpr: float


@dataclass
class OODReport:
    kind: str
    threshold: float
    accept_target: float
    held_out_items: int
    held_out_accepted: float  # in-distribution items the threshold accepts (target: accept)
    sets: list[OODSetReport]
    splits: int = 1  # random splits the figures are the mean of
    held_out_accepted_range: tuple[float, float] = (0.0, 1.0)  # over the splits

    def table(self) -> str:
        low, high = self.held_out_accepted_range
        rows = [f"OOD scorer {self.kind}, threshold {self.threshold:.4g}: held-out "
                f"in-distribution items accepted {100 * self.held_out_accepted:.1f} % "
                f"(target {100 * self.accept_target:.0f} %; mean of {self.splits} splits of "
                f"n={self.held_out_items}, {100 * low:.0f}-{100 * high:.0f} %)", "",
                "| set | items | AUROC | accepted at the threshold | FPR at 95 % TPR |",
                "|---|---|---|---|---|"]  # fmt: skip
        for s in self.sets:
            rows.append(f"| {s.name} | {s.items} | {s.auroc:.4f} | {100 * s.accepted:.1f} % | "
                        f"{100 * s.fpr_at_95_tpr:.1f} % |")  # fmt: skip
        return "\n".join(rows)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def evaluate_ood(X: np.ndarray, y: np.ndarray, outside: dict[str, np.ndarray],
                 config: OODConfig = DEFAULT, test_size: float = 0.5,
                 repeats: int = 5) -> OODReport:  # fmt: skip
    """The scorer fitted on one part of (X, y), scored on the rest and on `outside`; over
    `repeats` random splits, each figure their mean (one split of a few hundred items moves the
    held-out acceptance by several points)."""
    runs = [_one_split(X, y, outside, replace(config, seed=config.seed + r), test_size)
            for r in range(repeats)]  # fmt: skip
    accepted = [run.held_out_accepted for run in runs]
    sets = [OODSetReport(name, runs[0].sets[i].items,
                         *(float(np.mean([getattr(run.sets[i], f) for run in runs]))
                           for f in ("auroc", "accepted", "fpr_at_95_tpr")))
            for i, name in enumerate(outside)]  # fmt: skip
    return OODReport(config.kind, float(np.mean([run.threshold for run in runs])), config.accept,
                     runs[0].held_out_items, float(np.mean(accepted)), sets, repeats,
                     (float(min(accepted)), float(max(accepted))))  # fmt: skip


def _one_split(X, y, outside: dict[str, np.ndarray], config: OODConfig,
               test_size: float) -> OODReport:  # fmt: skip
    train, test = train_test_split(np.arange(len(y)), test_size=test_size, stratify=y,
                                   random_state=config.seed)  # fmt: skip
    scorer = fit_ood(X[train], y[train], config)
    inside = scorer.score(X[test])
    sets = []
    for name, features in outside.items():
        scores = scorer.score(features)
        sets.append(OODSetReport(name, len(scores), auroc(inside, scores),
                                 float((scores <= scorer.threshold).mean()),
                                 fpr_at_tpr(inside, scores)))  # fmt: skip
    return OODReport(scorer.kind, scorer.threshold, config.accept, len(test),
                     float((inside <= scorer.threshold).mean()), sets)  # fmt: skip


def outside_features(path: Path, inside: Path, meta: dict, repo: Path) -> np.ndarray:
    """Features of an out-of-distribution set: a cached dataset or run file of the same
    backbone, or a folder of images embedded now with it (into the same cache)."""
    from embedder.cache import dataset_folder, load_features

    if path.is_dir() and not (path / "dataset.json").is_file() and path.name != "embeddings":
        from embedder.features import FeaturesConfig, export_features, image_folder

        root = dataset_folder(inside).parents[2]  # <cache>/<model>/<version>/<digest>
        config = FeaturesConfig(repo=repo, model=meta["model"],
                                version=meta["version"], cache=root, progress=False,
                                run_name=f"ood-{path.name}")  # fmt: skip
        path = export_features(image_folder(path), config).run_file
    found = load_set(path)[1]
    if found["digest"] != meta["digest"]:
        raise HeadError(f"{path} was embedded by {found['model']} (digest {found['digest']}), "
                        f"not by the head's {meta['model']} ({meta['digest']})")  # fmt: skip
    return load_features(path).X
