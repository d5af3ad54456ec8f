"""embedder-features: embed a dataset into the cache, and look at what a cache holds."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from embedder.cache import load_features
from embedder.core.errors import EmbedderError
from embedder.features import FeaturesConfig, export_features
from embedder.features.sources import image_folder, path_list, text_table


def build_parser() -> argparse.ArgumentParser:
    d = FeaturesConfig()
    p = argparse.ArgumentParser(prog="embedder-features", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="embed a dataset into the cache")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", type=Path, help="folder of images (recursive)")
    src.add_argument("--paths", type=Path, help="text file listing image paths, one per line")
    src.add_argument("--texts", type=Path, help="CSV / TSV / JSONL / Parquet file of texts")
    e.add_argument("--labels-from-folders", action="store_true", help="label = sub-folder name")
    e.add_argument("--text-column", default="text")
    e.add_argument("--label-column")
    e.add_argument("--model", default=d.model)
    e.add_argument("--version", default=d.version)
    e.add_argument("--repo", type=Path, default=d.repo)
    e.add_argument("--cache", type=Path, default=d.cache)
    e.add_argument("--engine", default=d.engine, choices=("local", "server", "ray"))
    e.add_argument("--server", help="host:port of embedder-serve (engine server)")
    e.add_argument("--ray-address", help="Ray cluster address (engine ray; default: local Ray)")
    e.add_argument("--ray-actors", type=int, default=d.ray_actors)
    e.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help="items per inference batch (default: 4 for images on a CPU, 32 for text, 64 on GPU)",
    )
    e.add_argument("--workers", type=int, default=d.workers,
                   help="threads that decode and run inference (0: one per core)")  # fmt: skip
    e.add_argument("--prepare-in", choices=("auto", "threads", "processes"), default="auto",
                   help="where items are read and decoded (auto: processes on a GPU, where "
                   "threads are GIL-bound; threads on a CPU)")  # fmt: skip
    e.add_argument("--shard-rows", type=int, default=d.shard_rows)
    e.add_argument("--provider", default=d.provider, choices=("auto", "cpu", "cuda", "tensorrt"))
    e.add_argument("--name", help="dataset name for runs/<name>.parquet (default: input's name)")
    e.add_argument("--no-progress", action="store_true")
    s = sub.add_parser("show", help="rows, dimension and labels of a cached dataset")
    s.add_argument("path", type=Path)
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_flags(parser, args)
    try:
        if args.command == "show":
            f = load_features(args.path)
            labels = "none" if f.y is None else f"{len(set(f.y))} classes"
            print(f"{f.X.shape[0]} rows x {f.X.shape[1]} dims, labels: {labels}")
            return 0
        config = FeaturesConfig(
            repo=args.repo, model=args.model, version=args.version, cache=args.cache,
            engine=args.engine, server=args.server, batch_size=args.batch_size,
            workers=args.workers, shard_rows=args.shard_rows,
            prepare_processes={"auto": None, "threads": False, "processes": True}[args.prepare_in],
            provider=args.provider, ray_address=args.ray_address, ray_actors=args.ray_actors,
            progress=not args.no_progress, run_name=args.name or _default_name(args),
        )  # fmt: skip
        summary = export_features(_items(args), config)
        print(summary)
        print(f"this dataset: {summary.run_file}")
    except (EmbedderError, OSError) as exc:
        print(f"embedder-features: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
