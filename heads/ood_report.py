"""How well a head's OOD scorer tells its own data from other data (`embedder-heads evaluate
--ood`): the labelled features split in two, the scorer fitted and calibrated on one half, the
other half and each out-of-distribution set scored.

Per set: AUROC (in-distribution held out against the set), the share of the set accepted at
the calibrated threshold, and the share accepted when 95 % of the held-out half is (FPR at
95 % TPR, threshold-free). The held-out half's own acceptance says whether the calibration
held (target: `accept`, 0.95 by default).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
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

    def table(self) -> str:
        rows = [f"OOD scorer {self.kind}, threshold {self.threshold:.4g}: held-out "
                f"in-distribution items accepted {100 * self.held_out_accepted:.1f} % "
                f"(target {100 * self.accept_target:.0f} %, n={self.held_out_items})", "",
                "| set | items | AUROC | accepted at the threshold | FPR at 95 % TPR |",
                "|---|---|---|---|---|"]  # fmt: skip
        for s in self.sets:
            rows.append(f"| {s.name} | {s.items} | {s.auroc:.4f} | {100 * s.accepted:.1f} % | "
                        f"{100 * s.fpr_at_95_tpr:.1f} % |")  # fmt: skip
        return "\n".join(rows)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def evaluate_ood(X: np.ndarray, y: np.ndarray, outside: dict[str, np.ndarray],
                 config: OODConfig = DEFAULT, test_size: float = 0.5) -> OODReport:  # fmt: skip
    """The scorer fitted on one half of (X, y), scored on the other half and on `outside`."""
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
