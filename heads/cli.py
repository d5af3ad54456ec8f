"""embedder-heads: train, evaluate, few-shot curve and compare heads on cached embeddings."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from embedder.core.errors import EmbedderError

from .advise_cli import add_advise_parser
from .cli_args import at_least_2, grey_pixels, load_set, ood_config
from .errors import HeadError
from .train import HeadConfig, train_head


def _config(args: argparse.Namespace) -> HeadConfig:
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

    features, meta = load_set(args.features)
    head = train_head(features.X, features.y, _config(args))
    backbone = {k: meta[k] for k in ("model", "version", "digest")}
    ood = ood_config(args)
    scorer = fit_ood(features.X, features.y, ood) if ood else None
    save_head(head, args.out, backbone, features.X.shape[1], scorer)
    print(
        f"{head.config.kind}: C={head.C:.4g}, CV accuracy {max(head.cv_scores.values()):.4f}, "
        f"{head.fits} fits in {head.fit_seconds:.1f} s -> {args.out}"
    )
    if scorer:
        print(f"OOD scorer {scorer.kind}: threshold {scorer.threshold:.4g} accepts "
              f"{100 * scorer.calibration['accept_target']:.0f} % of held-out items "
              f"(per fold: {scorer.calibration['held_out_accepted_per_fold']})")  # fmt: skip


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .evaluate import evaluate, write_report

    features, meta = load_set(args.features)
    report = evaluate(
        features.X,
        features.y,
        _config(args),
        test_size=None if args.kfold else args.test_size,
        folds=args.kfold,
    )
    json_path, png = write_report(report, args.out, title=meta.get("model", ""))
    print(
        f"{report.protocol}: accuracy {report.accuracy:.4f}, macro-F1 {report.macro_f1:.4f} "
        f"-> {json_path}, {png}"
    )
    if args.ood_sets:
        from .ood_report import evaluate_ood, outside_features

        outside = {str(p): outside_features(p, args.features, meta, args.repo)
                   for p in args.ood_sets}  # fmt: skip
        ood = evaluate_ood(features.X, features.y, outside, ood_config(args))
        (args.out / "ood.json").write_text(ood.to_json() + "\n")
        print(f"\n{ood.table()}\n-> {args.out / 'ood.json'}")


def cmd_curve(args: argparse.Namespace) -> None:
    from .fewshot import few_shot_curve, pixel_baseline, plot_curve, tfidf_baseline

    features, meta = load_set(args.features)
    if args.texts:
        from embedder.cache import content_key
        from embedder.features.sources import text_table

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
    print(curve.table())
    print(f"\n{curve.verdict()}\nplot: {plot_curve(curve, args.out / 'curve.png')}")


def cmd_predict(args: argparse.Namespace) -> None:
    from .persist import load_head, load_ood

    pipeline, info = load_head(args.head)
    features, meta = load_set(args.features)
    info.check_backbone(meta)
    predictions = pipeline.predict(features.X)
    scorer = load_ood(args.head, info)
    verdicts = [""] * len(predictions)
    if scorer is not None:  # source, label, OOD score, known / unknown
        scores = scorer.score(features.X)
        verdicts = [f"\tood={s:.4g}\t{'unknown' if s > scorer.threshold else 'known'}"
                    for s in scores]  # fmt: skip
    for source, label, verdict in zip(features.sources, predictions, verdicts, strict=True):
        print(f"{source}\t{label}{verdict}")


def cmd_publish(args: argparse.Namespace) -> None:
    from .publish import publish

    heads = {}
    for spec in args.head:
        name, sep, folder = spec.partition("=")
        if not sep:
            raise HeadError(f"--head {spec!r}: write NAME=FOLDER (a folder saved by 'train')")
        heads[name] = Path(folder)
    target = publish(args.backbone, heads, args.repo, args.name, args.version, args.overwrite)
    print(f"published {', '.join(heads)} on {args.backbone} -> {target}")


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
    print(table(compare(aligned, y, _config(args), folds=args.folds)))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="embedder-heads", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, multiple=False):
        sp.add_argument(
            "--features",
            type=Path,
            nargs="+" if multiple else None,
            required=True,
            help="cached dataset folder(s) from embedder-features",
        )
        sp.add_argument("--kind", default="logreg", choices=("logreg", "linear_svc", "rbf_svc"))
        sp.add_argument("--scaling", default="standard", choices=("standard", "l2", "none"))
        sp.add_argument("--balanced", action="store_true", help="class_weight='balanced'")
        sp.add_argument("--folds", type=at_least_2, default=5, help="CV folds for choosing C")
        sp.add_argument("--seed", type=int, default=0)

    t = sub.add_parser("train", help="choose C by CV, refit, save head.skops + head.json")
    common(t)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument(
        "--ood",
        default="mahalanobis",
        choices=("mahalanobis", "knn", "none"),
        help="out-of-distribution scorer saved with the head, its threshold calibrated on "
        "held-out folds to accept 95 %% of in-distribution items",
    )
    t.set_defaults(run=cmd_train)
    e = sub.add_parser("evaluate", help="held-out or k-fold report + confusion matrix")
    common(e)
    e.add_argument("--test-size", type=float, default=0.5)
    e.add_argument("--kfold", type=int, help="k-fold instead of a held-out split")
    e.add_argument("--out", type=Path, default=Path("out/evaluate"))
    e.add_argument(
        "--ood",
        dest="ood_sets",
        nargs="+",
        type=Path,
        default=[],
        help="out-of-distribution sets (cached features of the same backbone, or "
        "image folders, embedded now): AUROC, share accepted, FPR at 95 %% TPR",
    )
    e.add_argument("--repo", type=Path, default=Path("models"),
                   help="where the backbone is, to embed --ood image folders")  # fmt: skip
    e.add_argument("--ood-scorer", dest="ood", default="mahalanobis",
                   choices=("mahalanobis", "knn"), help="the scorer --ood evaluates")  # fmt: skip
    e.set_defaults(run=cmd_evaluate)
    c = sub.add_parser("curve", help="few-shot curve vs a from-scratch baseline")
    common(c)
    c.add_argument("--texts", type=Path, help="the texts' table, for the TF-IDF baseline")
    c.add_argument("--text-column", default="text")
    c.add_argument("--pixels", type=int, default=32, help="raw-pixel baseline side (grey)")
    c.add_argument("--draws", type=int, default=5)
    c.add_argument("--ood", default="mahalanobis", choices=("mahalanobis", "knn", "none"),
                   help="also fit this OOD scorer on each draw and report the share of "
                   "in-distribution test items it accepts")  # fmt: skip
    c.add_argument("--out", type=Path, default=Path("out/curve"))
    c.set_defaults(run=cmd_curve)
    r = sub.add_parser("predict", help="apply a saved head to cached features")
    r.add_argument("--head", type=Path, required=True)
    r.add_argument("--features", type=Path, required=True)
    r.set_defaults(run=cmd_predict)
    u = sub.add_parser("publish", help="compose backbone + heads into one servable model")
    u.add_argument("--backbone", type=Path, required=True, help="models/<name>/<version>")
    u.add_argument("--head", action="append", required=True, help="NAME=FOLDER, repeatable")
    u.add_argument("--repo", type=Path, default=Path("models"))
    u.add_argument("--name", required=True, help="name of the published model")
    u.add_argument("--version", default="1")
    u.add_argument("--overwrite", action="store_true")
    u.set_defaults(run=cmd_publish)
    m = sub.add_parser("compare", help="rank feature sets of the same data by CV accuracy")
    common(m, multiple=True)
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
