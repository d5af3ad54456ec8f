"""`embedder-heads advise`: which backbone, cut points and head suit the user's labelled data,
measured on it (heads/advise.py), reported (advice_report.py), and with --publish served."""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli_args import at_least_2, grey_pixels
from .errors import HeadError


def _advise_items(args: argparse.Namespace) -> tuple[list, object]:
    """The labelled items, and a function making the from-scratch baseline of the rows."""
    from embedder.core.sources import image_folder, text_table

    from .fewshot import pixel_baseline, tfidf_baseline

    if args.images:
        if not args.labels_from_folders:
            raise HeadError(
                "advise needs labels: give --labels-from-folders (one sub-folder per class)"
            )
        items = list(image_folder(args.images, labels_from_folders=True))
        return items, lambda sources: (
            pixel_baseline(grey_pixels(sources, args.pixels)),
            "raw pixels",
        )
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
    features = FeaturesConfig(
        repo=args.repo, cache=args.cache, progress=not args.no_progress, run_name=args.run_name
    )
    embedded = embed_backbones(items, backbones, features)
    baseline, baseline_name = baseline_of(embedded.sources)
    config = AdviseConfig(folds=args.folds, top=args.top, seed=args.seed)
    advice = advise(embedded.sets, embedded.y, baseline, baseline_name, config)
    advice.seconds = {"batch export": embedded.seconds, **advice.seconds}
    files = advice_report.write(advice, args.out)
    target = publish_winner(advice, embedded.y, config, args) if args.publish else None
    if args.json:
        print(advice_report.to_json(advice))
        return
    print(advice_report.table(advice), "\n", advice_report.summary(advice), sep="\n")
    print("\n" + ", ".join(f"{k}: {v}" for k, v in files.items()))
    if target:
        print(f"published the winner -> {target}")


def publish_winner(advice, y, config, args: argparse.Namespace) -> Path:
    """The winner's head trained on every item with its OOD scorer, saved, and composed with
    its features' graph."""
    from .ood import fit_ood
    from .persist import save_head
    from .publish import publish_features
    from .train import train_head

    winner = advice.winner
    head = train_head(winner.features.X, y, config.head(winner.head))
    scorer = fit_ood(winner.features.X, y)
    backbone = {"model": winner.features.name, "version": "", "digest": winner.features.digest}
    folder = save_head(head, args.out / "head", backbone, winner.features.dim, scorer)
    return publish_features(
        args.repo, winner.features.parts, {args.head_name: folder}, args.publish, overwrite=True
    )


EXAMPLES = """\
  embedder-export export mobilenet_v2 --layers auto
  embedder-heads advise --images photos/ --labels-from-folders \\
      --backbones mobilenet_v2_layers,dinov2_small_layers --out out/advise --publish photos_best
  embedder-heads advise --texts news.csv --text-column body --label-column topic \\
      --backbones minilm_l6_layers --json
"""


def add_advise_parser(sub) -> None:
    from embedder.core import cli

    a = cli.command(
        sub,
        "advise",
        "which backbone, layers and head suit your labelled data: LogME screen, nested "
        "CV, few-shot curves; --publish serves the winner",
        EXAMPLES,
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
    cli.add_repo(a)
    a.add_argument("--cache", type=Path, default=Path("cache"), help="embedding cache")
    a.add_argument("--run-name", default="advise", help="the items' run name in the cache")
    a.add_argument("--out", type=Path, default=Path("out/advise"), help="advice.json, plots")
    a.add_argument("--folds", type=at_least_2, default=5, help="outer CV folds")
    a.add_argument(
        "--top",
        type=int,
        default=3,
        help="feature sets cross-validated by LogME rank, besides the default cuts",
    )
    a.add_argument("--pixels", type=int, default=32, help="raw-pixel baseline side (grey)")
    a.add_argument("--seed", type=int, default=0, help="folds' and draws' seed")
    a.add_argument("--publish", metavar="NAME", help="serve the winner as model NAME in --repo")
    a.add_argument("--head-name", default="head", help="the published head's name")
    a.add_argument("--no-progress", action="store_true", help="no progress bars")
    cli.add_json(a)
    a.set_defaults(run=cmd_advise)
