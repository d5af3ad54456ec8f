"""embedder-heads: train, evaluate, few-shot curve and compare heads on cached embeddings."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

from embedder.core.cli import print_json
from embedder.core.errors import EmbedderError

from .advise_cli import add_advise_parser
from .cli_args import at_least_2, grey_pixels, load_set, ood_config
from .errors import HeadError


def _config(args: argparse.Namespace):
    from .train import HeadConfig

    return HeadConfig(
        kind=args.kind,
        scaling=args.scaling,
        folds=args.folds,
        class_weight="balanced" if args.balanced else None,
        seed=args.seed,
    )


def cmd_train(args: argparse.Namespace) -> None:
    from .ood import fit_ood
    from .persist import save_head
    from .train import train_head

    features, meta = load_set(args.features)
    head = train_head(features.X, features.y, _config(args))
    backbone = {k: meta[k] for k in ("model", "version", "digest")}
    ood = ood_config(args)
    scorer = fit_ood(features.X, features.y, ood) if ood else None
    save_head(head, args.out, backbone, features.X.shape[1], scorer)
    accuracy = max(head.cv_scores.values()) if head.cv_scores else None
    described = scorer and {"kind": scorer.kind, "threshold": scorer.threshold,
                            **scorer.calibration}  # fmt: skip
    if args.json:
        return print_json({"kind": head.config.kind, "C": head.C, "cv_accuracy": accuracy,
                           "fits": head.fits, "seconds": head.fit_seconds, "out": args.out,
                           "ood": described})  # fmt: skip
    print(f"{head.config.kind}: C={head.C:.4g}, CV accuracy {accuracy:.4f}, {head.fits} fits "
          f"in {head.fit_seconds:.1f} s -> {args.out}")  # fmt: skip
    if scorer:
        print(f"OOD scorer {scorer.kind}: threshold {scorer.threshold:.4g} accepts "
              f"{100 * scorer.calibration['accept_target']:.0f} % of held-out items "
              f"(per fold: {scorer.calibration['held_out_accepted_per_fold']})")  # fmt: skip


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .evaluate import evaluate, write_report

    features, meta = load_set(args.features)
    test_size = None if args.kfold else args.test_size
    report = evaluate(features.X, features.y, _config(args), test_size, args.kfold)
    json_path, png = write_report(report, args.out, title=meta.get("model", ""))
    ood = None
    if args.ood_sets:
        from .ood_report import evaluate_ood, outside_features

        outside = {str(p): outside_features(p, args.features, meta, args.repo)
                   for p in args.ood_sets}  # fmt: skip
        ood = evaluate_ood(features.X, features.y, outside, ood_config(args))
        (args.out / "ood.json").write_text(ood.to_json() + "\n")
    if args.json:
        return print_json({"report": json.loads(report.to_json()),
                           "ood": json.loads(ood.to_json()) if ood else None})  # fmt: skip
    print(f"{report.protocol}: accuracy {report.accuracy:.4f}, macro-F1 {report.macro_f1:.4f} "
          f"-> {json_path}, {png}")  # fmt: skip
    if ood:
        print(f"\n{ood.table()}\n-> {args.out / 'ood.json'}")


def cmd_curve(args: argparse.Namespace) -> None:
    from .fewshot import few_shot_curve, pixel_baseline, plot_curve, tfidf_baseline

    features, meta = load_set(args.features)
    if args.texts:
        from embedder.cache import content_key
        from embedder.core.sources import text_table

        by_key = {content_key(i.text): i.text for i in text_table(args.texts, args.text_column)}
        missing = [
            s for k, s in zip(features.keys, features.sources, strict=True) if k not in by_key
        ]
        if missing:
            raise HeadError(
                f"{len(missing)} cached rows (e.g. {missing[0]}) are not in {args.texts}"
            )
        baseline, name = tfidf_baseline([by_key[k] for k in features.keys]), "TF-IDF"
    else:
        baseline, name = pixel_baseline(grey_pixels(features.sources, args.pixels)), "raw pixels"
    # TF-IDF rows are sparse and already L2-normalised: no centring for the baseline
    baseline_config = replace(_config(args), scaling="none") if args.texts else None
    curve = few_shot_curve(
        features.X,
        features.y,
        baseline,
        name=meta.get("model", "backbone"),
        baseline_name=name,
        draws=args.draws,
        config=_config(args),
        baseline_config=baseline_config,
        ood=ood_config(args),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "curve.json").write_text(curve.to_json())
    if args.json:
        return print(curve.to_json())
    print(curve.table())
    print(f"\n{curve.verdict()}\nplot: {plot_curve(curve, args.out / 'curve.png')}")


def cmd_predict(args: argparse.Namespace) -> None:
    from .persist import load_head, load_ood

    pipeline, info = load_head(args.head)
    features, meta = load_set(args.features)
    info.check_backbone(meta)
    predictions = pipeline.predict(features.X)
    scorer = load_ood(args.head, info)
    scores = scorer.score(features.X) if scorer is not None else [None] * len(predictions)
    rows = []
    for source, label, score in zip(features.sources, predictions, scores, strict=True):
        row = {"source": str(source), "label": str(label)}
        if score is not None:  # its OOD scorer's score, and whether it is over the threshold
            row |= {"ood_score": float(score), "unknown": bool(score > scorer.threshold)}
        rows.append(row)
    if args.json:
        return print_json(rows)
    for row in rows:
        verdict = ""
        if "unknown" in row:
            verdict = f"\tood={row['ood_score']:.4g}\t{'unknown' if row['unknown'] else 'known'}"
        print(f"{row['source']}\t{row['label']}{verdict}")


def cmd_publish(args: argparse.Namespace) -> None:
    from embedder.core.repository import model_folder

    from .publish import publish

    heads = {}
    for spec in args.head:
        name, sep, folder = spec.partition("=")
        if not sep:
            raise HeadError(f"--head {spec!r}: write NAME=FOLDER (a folder saved by 'train')")
        heads[name] = Path(folder)
    if args.backbone is None and not args.model:
        raise HeadError("name the backbone: --model NAME (and --version), in --repo")
    backbone = args.backbone or model_folder(args.repo, args.model, args.version)
    name, _, version = args.name.partition(":")
    target = publish(backbone, heads, args.repo, name, version or "1", args.overwrite)
    print(f"published {', '.join(heads)} on {backbone} -> {target}")


def cmd_compare(args: argparse.Namespace) -> None:
    from .compare import align, compare, table

    sets = {}
    for path in args.features:
        features, meta = load_set(path)
        name = f"{meta['model']}/{meta['version']}:{Path(path).name}"
        if name in sets:
            raise HeadError(f"two feature sets are both called {name}; give distinct files")
        sets[name] = (features.X, features.y, features.keys)
    aligned, y = align(sets)
    ranked = compare(aligned, y, _config(args), folds=args.folds)
    if args.json:
        return print_json([asdict(r) for r in ranked])
    print(table(ranked))


EXAMPLES = """\
  F=cache/mobilenet_v2/1/<digest>/runs/faces.parquet
  embedder-heads train    --features $F --kind logreg --out out/heads/faces
  embedder-heads evaluate --features $F --kfold 5 --ood data/digits --out out/eval
  embedder-heads curve    --features $F --pixels 32 --out out/curve
  embedder-heads compare  --features $F cache/dinov2_small/1/<digest>/runs/faces.parquet
  embedder-heads publish  --model mobilenet_v2 --head faces=out/heads/faces --name faces_model
  embedder-heads predict  --head out/heads/faces --features $F
  embedder-heads advise   --images photos/ --labels-from-folders \\
                          --backbones mobilenet_v2_layers,dinov2_small_layers --publish best
"""
KINDS, SCALINGS = ("logreg", "linear_svc", "rbf_svc"), ("standard", "l2", "none")
OOD_KINDS = ("mahalanobis", "knn", "none")


def _common(sp: argparse.ArgumentParser, multiple: bool = False) -> None:
    sp.add_argument(
        "--features",
        type=Path,
        nargs="+" if multiple else None,
        required=True,
        help="cached feature set(s): a run file (runs/<name>.parquet, one dataset "
        "and its labels) or a dataset folder, as embedder-features prints them",
    )
    sp.add_argument("--kind", default="logreg", choices=KINDS, help="the head's estimator")
    sp.add_argument(
        "--scaling",
        default="standard",
        choices=SCALINGS,
        help="before the estimator: standardise, L2-normalise or neither",
    )
    sp.add_argument("--balanced", action="store_true", help="class_weight='balanced'")
    sp.add_argument("--folds", type=at_least_2, default=5, help="CV folds for choosing C")
    sp.add_argument("--seed", type=int, default=0, help="folds, draws and solvers' seed")


def build_parser() -> argparse.ArgumentParser:
    from embedder.core import cli

    p = cli.parser("embedder-heads", __doc__, EXAMPLES)
    sub = cli.subcommands(p)
    t = cli.command(
        sub, "train", "choose C by CV, refit, save head.skops + head.json with its OOD scorer"
    )
    _common(t)
    t.add_argument("--out", type=Path, required=True, help="the head's folder")
    t.add_argument(
        "--ood",
        default="mahalanobis",
        choices=OOD_KINDS,
        help="out-of-distribution scorer saved with the head, its threshold "
        "calibrated on held-out folds to accept 95 %% of in-distribution items",
    )
    cli.add_json(t)
    t.set_defaults(run=cmd_train)
    e = cli.command(
        sub,
        "evaluate",
        "held-out or k-fold report, confusion matrix; --ood: how well other data are told apart",
    )
    _common(e)
    e.add_argument("--test-size", type=float, default=0.5, help="held-out share")
    e.add_argument("--kfold", type=at_least_2, help="k-fold instead of a held-out split")
    e.add_argument("--out", type=Path, default=Path("out/evaluate"), help="report folder")
    e.add_argument(
        "--ood",
        dest="ood_sets",
        nargs="+",
        type=Path,
        default=[],
        help="out-of-distribution sets (cached features of the same backbone, or "
        "image folders, embedded now): AUROC, share accepted, FPR at 95 %% TPR",
    )
    cli.add_repo(e)
    e.add_argument(
        "--ood-scorer",
        dest="ood",
        default="mahalanobis",
        choices=OOD_KINDS[:2],
        help="the scorer --ood evaluates",
    )
    cli.add_json(e)
    e.set_defaults(run=cmd_evaluate)
    c = cli.command(sub, "curve", "few-shot curve against a from-scratch baseline")
    _common(c)
    c.add_argument("--texts", type=Path, help="the texts' table, for the TF-IDF baseline")
    c.add_argument("--text-column", default="text", help="--texts: the texts' column")
    c.add_argument("--pixels", type=int, default=32, help="raw-pixel baseline side (grey)")
    c.add_argument("--draws", type=int, default=5, help="random draws per k")
    c.add_argument(
        "--ood",
        default="mahalanobis",
        choices=OOD_KINDS,
        help="also fit this OOD scorer on each draw and report the share of "
        "in-distribution test items it accepts",
    )
    c.add_argument("--out", type=Path, default=Path("out/curve"), help="curve.json, curve.png")
    cli.add_json(c)
    c.set_defaults(run=cmd_curve)
    r = cli.command(sub, "predict", "apply a saved head (and its OOD scorer) to cached features")
    r.add_argument("--head", type=Path, required=True, help="a folder saved by train")
    r.add_argument("--features", type=Path, required=True, help="a cached feature set")
    cli.add_json(r)
    r.set_defaults(run=cmd_predict)
    u = cli.command(sub, "publish", "compose a backbone and heads into one servable model")
    cli.add_model(u, required=False)
    u.add_argument(
        "--backbone",
        type=Path,
        action=cli.deprecated("--backbone", "--model"),
        help=argparse.SUPPRESS,
    )
    u.add_argument("--head", action="append", required=True, help="NAME=FOLDER, repeatable")
    cli.add_repo(u)
    u.add_argument(
        "--name",
        required=True,
        help="the published model, NAME or NAME:VERSION (version 1 unless given)",
    )
    u.add_argument("--overwrite", action="store_true", help="replace an existing version")
    u.set_defaults(run=cmd_publish)
    m = cli.command(sub, "compare", "rank feature sets of the same data by CV accuracy")
    _common(m, multiple=True)
    cli.add_json(m)
    m.set_defaults(run=cmd_compare)
    add_advise_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (HeadError, EmbedderError, ValueError, OSError) as exc:
        print(f"embedder-heads: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
