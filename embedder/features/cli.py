"""embedder-features: embed a dataset into the cache, and look at what a cache holds."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from embedder.cache import load_features
from embedder.core import cli
from embedder.core.errors import ConfigError, EmbedderError
from embedder.core.sources import image_folder, path_list, text_table
from embedder.features import FeaturesConfig, export_features

EXAMPLES = """\
  embedder-features export --images photos/ --labels-from-folders --model mobilenet_v2
  embedder-features export --texts news.csv --text-column body --label-column topic \\
      --model minilm_l6 --cache cache --json
  embedder-features export --images photos/ --model mobilenet_v2 --engine server --server host:50051
  embedder-features show cache/mobilenet_v2/1/<digest>/runs/photos.parquet
"""


def build_parser() -> argparse.ArgumentParser:
    d = FeaturesConfig()
    p = cli.parser("embedder-features", __doc__, EXAMPLES)
    sub = cli.subcommands(p)
    e = cli.command(sub, "export", "embed a dataset into the cache (a rerun embeds only what "
                    "is not there yet)", EXAMPLES)  # fmt: skip
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", type=Path, help="a folder of images (recursive)")
    src.add_argument("--paths", type=Path, help="a text file listing image paths, one a line")
    src.add_argument("--texts", type=Path, help="a CSV / TSV / JSONL / Parquet table of texts")
    e.add_argument("--labels-from-folders", action="store_true",
                   help="--images: label = the first sub-folder's name")  # fmt: skip
    e.add_argument("--text-column", default="text", help="--texts: the texts' column")
    e.add_argument("--label-column", help="--texts: the labels' column")
    cli.add_model(e)
    cli.add_repo(e)
    e.add_argument("--cache", type=Path, default=d.cache, help="the embedding cache folder")
    e.add_argument("--run-name", help="this dataset's name in the cache, runs/<name>.parquet "
                   "(default: the input's name)")  # fmt: skip
    e.add_argument("--name", dest="run_name", action=cli.deprecated("--name", "--run-name"),
                   help=argparse.SUPPRESS)  # fmt: skip
    e.add_argument("--engine", default=d.engine, choices=("local", "server", "ray"),
                   help="where inference runs: this process, an embedder-serve, Ray")  # fmt: skip
    cli.add_server(e)
    e.add_argument("--ray-address", help="--engine ray: a cluster's address (default: a local "
                   "Ray)")  # fmt: skip
    e.add_argument("--ray-actors", type=int, default=d.ray_actors,
                   help="--engine ray: sessions side by side, one CPU each")  # fmt: skip
    e.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="items per inference batch, or per request with --engine server (0: 4 "
                   "images or 32 texts on a CPU, 64 on a GPU, 32 a request)")  # fmt: skip
    e.add_argument(
        "--workers",
        type=int,
        default=d.workers,
        help="--engine local: threads that decode and run inference (0: one a core)",
    )
    e.add_argument("--prepare-in", choices=("auto", "threads", "processes"), default="auto",
                   help="where items are read and decoded (auto: processes on a GPU, where "
                   "threads are GIL-bound; threads on a CPU)")  # fmt: skip
    e.add_argument("--shard-rows", type=int, default=d.shard_rows,
                   help="rows per Parquet shard: the most a killed run loses")  # fmt: skip
    e.add_argument("--provider", default=d.provider, choices=("auto", "cpu", "cuda", "tensorrt"),
                   help="execution provider of the local and Ray engines")  # fmt: skip
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    cli.add_json(e)
    s = cli.command(sub, "show", "rows, dimension and labels of a cached dataset or run file")
    s.add_argument("path", type=Path, help="a dataset folder or a runs/<name>.parquet file")
    cli.add_json(s)
    return p


def _check_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Flags that belong to another kind of input would be silently ignored: refuse them."""
    if args.command != "export":
        return
    if args.labels_from_folders and not args.images:
        parser.error("--labels-from-folders needs --images (a folder with a sub-folder per class)")
    if not args.texts and (args.label_column or args.text_column != "text"):
        parser.error("--text-column / --label-column need --texts (a table of texts)")
    if args.workers and args.engine != "local":
        parser.error("--workers is for the local engine (Ray: --ray-actors)")


def _items(args: argparse.Namespace):
    if args.images:
        return image_folder(args.images, args.labels_from_folders)
    if args.paths:
        return path_list(args.paths)
    return text_table(args.texts, args.text_column, args.label_column)


def _default_name(args: argparse.Namespace) -> str:
    source = args.images or args.paths or args.texts
    return Path(source).resolve().name.split(".")[0] or "run"


def _config(args: argparse.Namespace) -> FeaturesConfig:
    return FeaturesConfig(
        repo=args.repo, model=args.model, version=args.version, cache=args.cache,
        engine=args.engine, server=args.server, token=cli.token(args),
        root_cert=cli.read_root_cert(args.root_cert), batch_size=args.batch_size,
        workers=args.workers, shard_rows=args.shard_rows,
        prepare_processes={"auto": None, "threads": False, "processes": True}[args.prepare_in],
        provider=args.provider, ray_address=args.ray_address, ray_actors=args.ray_actors,
        progress=not args.no_progress, run_name=args.run_name or _default_name(args),
    )  # fmt: skip


def _show(args: argparse.Namespace) -> None:
    f = load_features(args.path)
    labels = None if f.y is None else sorted(set(map(str, f.y)))
    if args.json:
        cli.print_json({"rows": f.X.shape[0], "dim": f.X.shape[1], "labels": labels})
    else:
        described = "none" if labels is None else f"{len(labels)} classes"
        print(f"{f.X.shape[0]} rows x {f.X.shape[1]} dims, labels: {described}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_flags(parser, args)
    try:
        if args.command == "show":
            _show(args)
            return 0
        summary = export_features(_items(args), _config(args))
    except ConfigError as exc:
        print(f"embedder-features: error: {exc.for_flags()}", file=sys.stderr)
        return 2
    except (EmbedderError, OSError) as exc:
        print(f"embedder-features: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        cli.print_json(asdict(summary) | {"keys": len(summary.keys)})
    else:
        print(summary)
        print(f"this dataset: {summary.run_file}")
    if summary.reasons:
        counted = ", ".join(f"{n} x {why}" for why, n in sorted(summary.reasons.items(),
                                                               key=lambda kv: -kv[1]))  # fmt: skip
        print(f"failed: {counted} (details: {summary.dataset}/failures)", file=sys.stderr)
    if summary.failed and not summary.embedded and not summary.from_cache:
        print("embedder-features: error: every item failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
