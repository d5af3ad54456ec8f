"""embedder-client: list the served models, embed images or texts into .npy / .parquet, and
classify images with a published model's heads."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from embedder.core import cli
from embedder.core.errors import EmbedderError

OUTPUT_SUFFIXES = (".npy", ".parquet")
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")
EXAMPLES = """\
  embedder-client models --json
  embedder-client embed --model mobilenet_v2 --images photos/ a.jpg --out vectors.parquet
  embedder-client embed --model minilm_l6 --texts news.csv --text-column body --out v.npy
  embedder-client classify --model mobilenet_v2_faces --images a.jpg b.png
  EMBEDDER_TOKEN=s3cret embedder-client --server host:50051 --root-cert ca.pem models
"""


def write_output(path: Path, ids: list[str], embeddings: np.ndarray) -> None:
    if path.suffix == ".npy":
        np.save(path, embeddings)
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        from embedder.cache import embedding_column

        pq.write_table(pa.table({"source": ids, "embedding": embedding_column(embeddings)}), path)
    else:
        raise EmbedderError(f"--out {path}: use a .npy or .parquet file name")


def served_gate(info) -> str:
    """The fidelity gate of the file the server runs (fp32 is the reference: none)."""
    from embedder.core.manifest import Manifest

    if info.precision == "fp32":
        return "fp32"
    variant = Manifest.from_dict(json.loads(info.manifest_json)).variants.get(info.precision)
    return variant.gate_summary() if variant else "-"


def image_files(paths: list[Path]) -> list[Path]:
    """Files as given, folders as every image file under them (sorted)."""
    from embedder.core.sources import IMAGE_SUFFIXES

    files = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(path)
    if not files:
        raise EmbedderError(f"--images {' '.join(map(str, paths))}: no image file there")
    return files


def texts_of(path: Path, column: str) -> list[str]:
    """A table's text column (CSV, TSV, JSONL, Parquet), or a UTF-8 file's non-empty lines."""
    if path.suffix.lower() in TABLE_SUFFIXES:
        from embedder.core.sources import text_table

        rows = list(text_table(path, column))
        bad = [r for r in rows if r.error]
        if bad:
            raise EmbedderError(f"--texts {path}: row {bad[0].source}: {bad[0].error}")
        texts = [r.text for r in rows]
    else:
        texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise EmbedderError(f"--texts {path} has no non-empty line to embed")
    return texts


def classify_lines(sources: list[str], heads) -> list[str]:
    """One tab-separated line per item and head: source, head, top labels with their scores,
    and for a head with an OOD scorer its score and `unknown` / `known`."""
    lines = []
    for head in heads:
        for source, top in zip(sources, head.items, strict=True):
            labels = " ".join(f"{label}:{score:.4g}" for label, score in
                              zip(top.labels, top.scores, strict=True))  # fmt: skip
            ood = ""
            if head.ood_scored:
                ood = f"\tood={top.ood_score:.4g}\t{'unknown' if top.unknown else 'known'}"
            lines.append(f"{source}\t{head.head}\t{labels}{ood}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("embedder-client", __doc__, EXAMPLES)
    cli.add_server(p)
    sub = cli.subcommands(p)
    m = cli.command(sub, "models", "list the served models: name/version, modality, dimension, "
                    "precision, providers, fidelity gate")  # fmt: skip
    cli.add_json(m)
    e = cli.command(sub, "embed", "embed images or texts into a .npy or .parquet file")
    cli.add_model(e)
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", nargs="+", type=Path, help="image files or folders of them")
    src.add_argument("--texts", type=Path, help="a table of texts (.csv .tsv .jsonl .parquet) "
                     "or a UTF-8 file, one text per line")  # fmt: skip
    e.add_argument("--text-column", default="text", help="--texts table: the texts' column")
    e.add_argument("--out", type=Path, required=True, help="a .npy or .parquet file to write")
    e.add_argument("--normalize", action="store_true", help="L2-normalise the vectors")
    e.add_argument("--truncate-dim", type=int, default=0, help="keep the first k dimensions "
                   "(0: all)")  # fmt: skip
    e.add_argument("--batch-size", type=int, default=32, help="items per request")
    c = cli.command(sub, "classify", "the published heads' top labels for images, and whether "
                    "each is outside what a head learned")  # fmt: skip
    cli.add_model(c)
    c.add_argument("--images", nargs="+", type=Path, required=True,
                   help="image files or folders of them")  # fmt: skip
    c.add_argument("--head", action="append", default=[], help="only this head (repeatable)")
    c.add_argument("--top-k", type=int, default=1, help="labels per item and head")
    cli.add_json(c)
    return p


def run(args: argparse.Namespace, client) -> None:
    if args.command == "models":
        models = client.list_models()
        if args.json:
            cli.print_json([{"name": m.name, "version": m.version, "modality": m.modality,
                             "dim": m.dim, "precision": m.precision, "providers":
                             list(m.providers), "gate": served_gate(m), "heads": list(m.heads)}
                            for m in models])  # fmt: skip
        for m in [] if args.json else models:
            print(f"{m.name}/{m.version}\t{m.modality}\t{m.dim}\t{m.precision}\t"
                  f"{','.join(m.providers)}\t{served_gate(m)}")  # fmt: skip
        return
    if args.command == "classify":
        from embedder.client.messages import image_item

        files = image_files(args.images)
        heads = client.classify(args.model, [image_item(f) for f in files], args.head,
                                args.top_k, version=args.version)  # fmt: skip
        if args.json:
            from google.protobuf.json_format import MessageToDict

            cli.print_json({"sources": list(map(str, files)),
                            "heads": [MessageToDict(h) for h in heads]})  # fmt: skip
        else:
            print("\n".join(classify_lines(list(map(str, files)), heads)))
        return
    options = dict(normalize=args.normalize, truncate_dim=args.truncate_dim,
                   batch_size=args.batch_size)  # fmt: skip
    if args.images:
        files = image_files(args.images)
        ids, vectors = [str(f) for f in files], client.embed_images(args.model, files, **options)
    else:
        ids = texts_of(args.texts, args.text_column)
        vectors = client.embed_texts(args.model, ids, **options)
    write_output(args.out, ids, vectors)
    print(f"wrote {vectors.shape[0]} x {vectors.shape[1]} embeddings to {args.out}")


def client_main(argv: list[str] | None = None) -> int:
    import grpc

    from embedder.client.clients import EmbedderClient

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "embed" and args.out.suffix not in OUTPUT_SUFFIXES:
        parser.error(f"--out {args.out}: use a .npy or .parquet file name")
    try:
        root_cert = cli.read_root_cert(args.root_cert)
        with EmbedderClient(args.server, token=cli.token(args), root_cert=root_cert) as client:
            run(args, client)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            print(f"embedder-client: error: cannot reach embedder-serve at {args.server} "
                  f"({exc.details()}); is it running? pass --server or set "
                  f"{cli.SERVER}", file=sys.stderr)  # fmt: skip
        else:
            print(f"embedder-client: error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 2
    except (EmbedderError, OSError, UnicodeDecodeError) as exc:
        print(f"embedder-client: error: {exc}", file=sys.stderr)
        return 2
    return 0
