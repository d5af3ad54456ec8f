"""embedder-heads: train, evaluate, few-shot curve and compare heads on cached embeddings."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from embedder.core.errors import EmbedderError

from .errors import HeadError
from .train import HeadConfig, train_head


def _load(path: Path):
    """Features of a cache dataset folder or a run file, and the dataset's identity (+ digest)."""
    from embedder.cache import dataset_folder, load_features, read_identity

    features = load_features(path)
    meta = read_identity(path) | {"digest": dataset_folder(path).name}
    return features, meta


def _at_least_2(text: str) -> int:
    if not text.isdigit() or int(text) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: folds must be an integer >= 2")
    return int(text)


def _config(args: argparse.Namespace) -> HeadConfig:
    return HeadConfig(
        kind=args.kind,
        scaling=args.scaling,
        folds=args.folds,
        class_weight="balanced" if args.balanced else None,
        seed=args.seed,
    )


def cmd_train(args: argparse.Namespace) -> None:
    from .persist import save_head

    features, meta = _load(args.features)
    head = train_head(features.X, features.y, _config(args))
    backbone = {k: meta[k] for k in ("model", "version", "digest")}
    save_head(head, args.out, backbone, features.X.shape[1])
    print(
        f"{head.config.kind}: C={head.C:.4g}, CV accuracy {max(head.cv_scores.values()):.4f}, "
        f"{head.fits} fits in {head.fit_seconds:.1f} s -> {args.out}"
    )


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .evaluate import evaluate, write_report

    features, meta = _load(args.features)
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


def _pixels(sources: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(s).convert("L").resize((size, size))) for s in sources])


def cmd_curve(args: argparse.Namespace) -> None:
    from .fewshot import few_shot_curve, pixel_baseline, plot_curve, tfidf_baseline

    features, meta = _load(args.features)
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
        baseline, name = pixel_baseline(_pixels(features.sources, args.pixels)), "raw pixels"
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
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "curve.json").write_text(curve.to_json())
    print(curve.table())
    print(f"\n{curve.verdict()}\nplot: {plot_curve(curve, args.out / 'curve.png')}")


def cmd_predict(args: argparse.Namespace) -> None:
    from .persist import load_head

    pipeline, info = load_head(args.head)
    features, meta = _load(args.features)
    info.check_backbone(meta)
    predictions = pipeline.predict(features.X)
    for source, label in zip(features.sources, predictions, strict=True):
        print(f"{source}\t{label}")


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
        features, meta = _load(path)
        name = f"{meta['model']}/{meta['version']}:{Path(path).name}"
        if name in sets:
            raise HeadError(f"two feature sets are both called {name}; give distinct files")
        sets[name] = (features.X, features.y, features.keys)
    aligned, y = align(sets)
    print(table(compare(aligned, y, _config(args), folds=args.folds)))


def _advise_items(args: argparse.Namespace) -> tuple[list, object]:
    """The labelled items, and a function making the from-scratch baseline of the rows."""
    from embedder.features.sources import image_folder, text_table

    from .fewshot import pixel_baseline, tfidf_baseline

    if args.images:
        if not args.labels_from_folders:
            raise HeadError("advise needs labels: give --labels-from-folders (one sub-folder "
                            "per class)")  # fmt: skip
        items = list(image_folder(args.images, labels_from_folders=True))
        return items, lambda sources: (pixel_baseline(_pixels(sources, args.pixels)), "raw pixels")
    if not args.label_column:
        raise HeadError("advise needs labels: give --label-column")
    items = list(text_table(args.texts, args.text_column, args.label_column))
    text_of = {i.source: i.text for i in items}
    return items, lambda sources: (tfidf_baseline([text_of[s] for s in sources]), "TF-IDF")


def cmd_advise(args: argparse.Namespace) -> None:
    from embedder.features import FeaturesConfig

    from . import advice_report
    from .advise import AdviseConfig, advise
    from .advise_inputs import embed_backbones

    items, baseline_of = _advise_items(args)
    backbones = [b for b in args.backbones.split(",") if b]
    features = FeaturesConfig(repo=args.repo, cache=args.cache, progress=not args.no_progress,
                              run_name=args.run_name)  # fmt: skip
    embedded = embed_backbones(items, backbones, features)
    baseline, baseline_name = baseline_of(embedded.sources)
    config = AdviseConfig(folds=args.folds, top=args.top, seed=args.seed)
    advice = advise(embedded.sets, embedded.y, baseline, baseline_name, config)
    advice.seconds = {"batch export": embedded.seconds, **advice.seconds}
    print(advice_report.table(advice), "\n", advice_report.summary(advice), sep="\n")
    files = advice_report.write(advice, args.out)
    print("\n" + ", ".join(f"{k}: {v}" for k, v in files.items()))
    if args.publish:
        target = publish_winner(advice, embedded.y, config, args)
        print(f"published the winner -> {target}")


def publish_winner(advice, y, config, args: argparse.Namespace) -> Path:
    """The winner's head trained on every item, saved, and composed with its features' graph."""
    from .persist import save_head
    from .publish import publish_features

    winner = advice.winner
    head = train_head(winner.features.X, y, config.head(winner.head))
    backbone = {"model": winner.features.name, "version": "", "digest": winner.features.digest}
    folder = save_head(head, args.out / "head", backbone, winner.features.dim)
    return publish_features(args.repo, winner.features.parts, {args.head_name: folder},
                            args.publish, overwrite=True)  # fmt: skip


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
        sp.add_argument("--folds", type=_at_least_2, default=5, help="CV folds for choosing C")
        sp.add_argument("--seed", type=int, default=0)

    t = sub.add_parser("train", help="choose C by CV, refit, save head.skops + head.json")
    common(t)
    t.add_argument("--out", type=Path, required=True)
    t.set_defaults(run=cmd_train)
    e = sub.add_parser("evaluate", help="held-out or k-fold report + confusion matrix")
    common(e)
    e.add_argument("--test-size", type=float, default=0.5)
    e.add_argument("--kfold", type=int, help="k-fold instead of a held-out split")
    e.add_argument("--out", type=Path, default=Path("out/evaluate"))
    e.set_defaults(run=cmd_evaluate)
    c = sub.add_parser("curve", help="few-shot curve vs a from-scratch baseline")
    common(c)
    c.add_argument("--texts", type=Path, help="the texts' table, for the TF-IDF baseline")
    c.add_argument("--text-column", default="text")
    c.add_argument("--pixels", type=int, default=32, help="raw-pixel baseline side (grey)")
    c.add_argument("--draws", type=int, default=5)
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
    a = sub.add_parser(
        "advise",
        help="which backbone, layers and head suit your labelled data: LogME screen, nested "
        "CV, few-shot curves; --publish serves the winner",
    )
    source = a.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="a folder of images, one sub-folder a class")
    source.add_argument("--texts", type=Path, help="a CSV, JSONL or Parquet table of texts")
    a.add_argument("--labels-from-folders", action="store_true", help="--images: label = folder")
    a.add_argument("--text-column", default="text", help="--texts: the texts' column")
    a.add_argument("--label-column", help="--texts: the labels' column")
    a.add_argument(
        "--backbones",
        required=True,
        help="models in --repo, comma-separated; export them with --layers auto to compare "
        "their cut points (embedder-export export NAME --layers auto)",
    )
    a.add_argument("--repo", type=Path, default=Path("models"), help="model repository")
    a.add_argument("--cache", type=Path, default=Path("cache"), help="embedding cache")
    a.add_argument("--run-name", default="advise", help="the items' run name in the cache")
    a.add_argument("--out", type=Path, default=Path("out/advise"), help="advice.json, plots")
    a.add_argument("--folds", type=_at_least_2, default=5, help="outer CV folds")
    a.add_argument(
        "--top",
        type=int,
        default=3,
        help="feature sets cross-validated by LogME rank, besides the default cuts",
    )
    a.add_argument("--pixels", type=int, default=32, help="raw-pixel baseline side (grey)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--publish", metavar="NAME", help="serve the winner as model NAME in --repo")
    a.add_argument("--head-name", default="head", help="the published head's name")
    a.add_argument("--no-progress", action="store_true", help="no progress bars")
    a.set_defaults(run=cmd_advise)
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
