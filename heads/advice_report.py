"""The advisor's answer for people and programs: a table, advice.json, and two pictures
(accuracy against cost per item; few-shot curves of the best candidates)."""

from __future__ import annotations

import json
from pathlib import Path

from .advise import Advice, Candidate

SCREENED_ROWS = 8  # screened-only candidates shown in the table (advice.json has them all)


def _label(c: Candidate) -> str:
    f = c.features
    return f.name + ("  (default cut)" if f.is_default_cut else "")


def table(advice: Advice) -> str:
    rows = [
        "| rank | features | head | dim | passes | ms/item | LogME | CV accuracy % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    shown = [c for c in advice.candidates if c.head] + [c for c in advice.candidates if not c.head][
        :SCREENED_ROWS
    ]
    for i, c in enumerate(shown, 1):
        f = c.features
        accuracy = (
            f"{100 * c.cv_accuracy:.2f} ± {100 * c.cv_std:.2f}" if c.head else "screened only"
        )
        rows.append(
            f"| {i} | {_label(c)} | {c.head or '-'} | {f.dim} | {f.passes} | "
            f"{f.ms_per_item:.1f} | {c.logme:.4f} | {accuracy} |"
        )
    return "\n".join(rows)


def summary(advice: Advice) -> str:
    """What the advice says, in sentences: the winner against the default cuts."""
    w = advice.winner
    lines = [
        f"winner: {w.features.name} with a {w.head} head, CV accuracy "
        f"{100 * w.cv_accuracy:.2f} % ({w.features.passes} forward pass"
        f"{'es' if w.features.passes > 1 else ''}, {w.features.ms_per_item:.1f} ms/item)"
    ]
    for d in advice.default_cuts:
        errors = (1 - w.cv_accuracy) / max(1 - d.cv_accuracy, 1e-12) - 1
        lines.append(
            f"  against {d.features.name} (its default cut, {100 * d.cv_accuracy:.2f} %): "
            f"errors {100 * errors:+.0f} %"
        )
    tau = advice.kendall_tau
    lines.append(
        "LogME against CV over the cross-validated sets: Kendall's tau "
        + (f"{tau:+.2f}" if tau is not None else "n/a (fewer than three sets)")
    )
    for curve in advice.curves:
        lines.append(f"few-shot, {curve.name}: {curve.verdict()}")
    return "\n".join(lines)


def to_json(advice: Advice) -> str:
    return json.dumps(
        {
            "winner": advice.winner.to_dict(),
            "candidates": [c.to_dict() for c in advice.candidates],
            "n_items": advice.n_items,
            "classes": advice.classes,
            "kendall_tau": advice.kendall_tau,
            "seconds": {k: round(v, 2) for k, v in advice.seconds.items()},
            "few_shot": [json.loads(c.to_json()) for c in advice.curves],
        },
        indent=2,
    )


def short_name(features: str) -> str:
    """A feature set's name short enough for a plot: `dinov2_small_layers:encoder.layer.5+
    layernorm` as `dinov2_small L5+ln`."""
    for long, short in (("_layers", ""), ("encoder.layer.", "L"), ("features.", "f"),
                        ("blocks.", "b"), ("layernorm", "ln"), (":", " ")):  # fmt: skip
        features = features.replace(long, short)
    return features


def plot_cost(report: dict, path: Path) -> Path:
    """CV accuracy against ms per item, every cross-validated candidate of `report` (advice.json
    as a dict); the winner circled, the default cuts as squares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    measured = [c for c in report["candidates"] if c["head"]]
    costs = [c["ms_per_item"] for c in measured]
    middle = (min(costs) * max(costs)) ** 0.5  # labels point inwards from either side
    fig, ax = plt.subplots(figsize=(9, 5))
    for rank, c in enumerate(measured, 1):
        marker = "s" if c["default_cut"] else ("o" if c["head"] == "logreg" else "^")
        x, y = c["ms_per_item"], 100 * c["cv_accuracy"]
        ax.scatter(x, y, marker=marker, s=40,
                   color="tab:orange" if c["forward_passes"] > 1 else "tab:blue")  # fmt: skip
        right = x > middle
        ax.annotate(f"{rank}. {short_name(c['features'])} ({c['head']})", (x, y), fontsize=7,
                    xytext=(-6 if right else 6, 2), textcoords="offset points",
                    ha="right" if right else "left")  # fmt: skip
    w = report["winner"]
    ax.scatter(w["ms_per_item"], 100 * w["cv_accuracy"], s=250, facecolors="none",
               edgecolors="red", label="winner")  # fmt: skip
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(  # 2, 5, 20, 50, ... labelled too
        FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else "")
    )
    ax.set_xlabel("ms per item (decode + forward passes), log scale")
    ax.set_ylabel(f"{len(report['classes'])}-class CV accuracy, % (n={report['n_items']})")
    ax.set_title("squares: default cuts; o: logistic regression; ^: linear SVM; "
                 "orange: two backbones", fontsize=8)  # fmt: skip
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, plt, path)


def plot_curves(report: dict, path: Path) -> Path:
    """Few-shot accuracy of the best candidates and of the baseline (from the first curve;
    every curve drew the same examples)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, curve in enumerate(report["few_shot"]):
        points = [p for p in curve["points"] if p["k"] != "all"]
        ks = [p["k"] for p in points]
        ax.plot(ks, [100 * p["mean"] for p in points], "o-", label=short_name(curve["name"]))
        if i == 0:
            ax.plot(ks, [100 * p["baseline_mean"] for p in points], "k--",
                    label=curve["baseline"])  # fmt: skip
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("examples per class (k)")
    ax.set_ylabel("test accuracy, %")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(advice: Advice, folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    text = to_json(advice)
    (folder / "advice.json").write_text(text + "\n")
    report = json.loads(text)  # the pictures are drawn from what the file says
    return {
        "json": folder / "advice.json",
        "cost": plot_cost(report, folder / "advice.png"),
        "curves": plot_curves(report, folder / "few_shot.png"),
    }
