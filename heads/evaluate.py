"""Evaluate a head: held-out split or k-fold, accuracy, macro-F1, per-class report, confusion."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score
from sklearn.model_selection import train_test_split

from .crossval import cross_predict, outer_folds
from .train import DEFAULT_CONFIG, HeadConfig, check_features, check_labels, train_head


@dataclass
class Report:
    kind: str
    protocol: str  # "holdout 0.5" or "5-fold"
    n: int
    classes: list[str]
    accuracy: float
    macro_f1: float
    per_class: dict
    confusion: list[list[int]]
    C: list[float]  # chosen per training split

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def _report(y_true, y_pred, classes, config: HeadConfig, protocol: str, Cs) -> Report:
    labels = list(classes)
    return Report(
        kind=config.kind,
        protocol=protocol,
        n=len(y_true),
        classes=[str(c) for c in labels],
        accuracy=float(accuracy_score(y_true, y_pred)),
        macro_f1=float(f1_score(y_true, y_pred, average="macro")),
        per_class=classification_report(
            y_true, y_pred, labels=labels, output_dict=True, zero_division=0
        ),
        confusion=confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        C=list(Cs),
    )


def evaluate(
    X,
    y,
    config: HeadConfig = DEFAULT_CONFIG,
    test_size: float | None = 0.5,
    folds: int | None = None,
) -> Report:
    """Held-out split (`test_size`) or k-fold (`folds`); C is tuned inside each training part."""
    X = check_features(X)
    y = check_labels(y, folds or 2)
    classes = np.unique(y)
    if folds:
        pred, Cs = cross_predict(X, y, outer_folds(y, folds, config.seed), config)
        return _report(y, pred, classes, config, f"{folds}-fold", Cs)
    Xtr, Xte, ytr, yte = train_test_split(
        X, y, test_size=test_size, stratify=y, random_state=config.seed
    )
    head = train_head(Xtr, ytr, config)
    return _report(yte, head.predict(Xte), classes, config, f"holdout {test_size}", [head.C])


def write_report(report: Report, folder: str | Path, title: str = "") -> tuple[Path, Path]:
    """report.json and confusion.png into `folder`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "report.json"
    json_path.write_text(report.to_json() + "\n")
    cm = np.array(report.confusion)
    size = max(4, 0.5 * len(report.classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(report.classes)), report.classes, rotation=45, ha="right")
    ax.set_yticks(range(len(report.classes)), report.classes)
    for (i, j), v in np.ndenumerate(cm):
        ax.text(
            j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black"
        )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(
        f"{title} {report.kind}: acc {report.accuracy:.3f}, macro-F1 {report.macro_f1:.3f}"
    )
    fig.tight_layout()
    png = folder / "confusion.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return json_path, png
