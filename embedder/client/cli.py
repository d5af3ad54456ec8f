"""embedder-client: list the served models, embed files or lines of text into .npy / .parquet."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from embedder.core.errors import EmbedderError

OUTPUT_SUFFIXES = (".npy", ".parquet")


def write_output(path: Path, ids: list[str], embeddings: np.ndarray) -> None:
    if path.suffix == ".npy":
        np.save(path, embeddings)
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        from embedder.cache import embedding_column

        pq.write_table(pa.table({"source": ids, "embedding": embedding_column(embeddings)}), path)
    else:
        raise EmbedderError(f"output {path}: use a .npy or .parquet file name")


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
                verdict = "unknown" if top.unknown else "known"
                ood = f"\tood={top.ood_score:.4g}\t{verdict}"
            lines.append(f"{source}\t{head.head}\t{labels}{ood}")
    return lines


def served_gate(info) -> str:
    """The fidelity gate of the file the server runs (fp32 is the reference: none)."""
    import json

    from embedder.core.manifest import Manifest

    if info.precision == "fp32":
        return "fp32"
    variant = Manifest.from_dict(json.loads(info.manifest_json)).variants.get(info.precision)
    return variant.gate_summary() if variant else "-"


def client_main(argv: list[str] | None = None) -> int:
    import grpc

    from embedder.client.clients import EmbedderClient

    p = argparse.ArgumentParser(prog="embedder-client", description="Embed files or text lines.")
    p.add_argument("--server", default="127.0.0.1:50051")
    p.add_argument("--token")
    p.add_argument("--root-cert", type=Path, help="PEM CA certificate: connect with TLS")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the served models")
    e = sub.add_parser("embed", help="embed images or lines of text")
    e.add_argument("--model", required=True)
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", nargs="+", type=Path, help="image files")
    src.add_argument("--texts", type=Path, help="a UTF-8 file, one text per line")
    e.add_argument("--out", type=Path, required=True, help=".npy or .parquet")
    e.add_argument("--normalize", action="store_true")
    e.add_argument("--truncate-dim", type=int, default=0)
    e.add_argument("--batch-size", type=int, default=32)
    c = sub.add_parser("classify", help="the published heads' top labels for image files, and "
                       "whether each image is outside what a head learned")  # fmt: skip
    c.add_argument("--model", required=True, help="a model published with heads")
    c.add_argument("--images", nargs="+", type=Path, required=True, help="image files")
    c.add_argument("--head", action="append", default=[], help="only this head (repeatable)")
    c.add_argument("--top-k", type=int, default=1, help="labels per item and head")
    args = p.parse_args(argv)
    if args.command == "embed" and args.out.suffix not in OUTPUT_SUFFIXES:
        p.error(f"--out {args.out}: use a .npy or .parquet file name")
    try:
        root_cert = args.root_cert.read_bytes() if args.root_cert else None
        with EmbedderClient(args.server, token=args.token, root_cert=root_cert) as client:
            if args.command == "models":
                for m in client.list_models():
                    print(f"{m.name}/{m.version}\t{m.modality}\t{m.dim}\t{m.precision}\t"
                          f"{','.join(m.providers)}\t{served_gate(m)}")  # fmt: skip
                return 0
            if args.command == "classify":
                from embedder.client.messages import image_item

                items = [image_item(path) for path in args.images]
                heads = client.classify(args.model, items, args.head, args.top_k)
                print("\n".join(classify_lines([str(p) for p in args.images], heads)))
                return 0
            options = dict(
                normalize=args.normalize, truncate_dim=args.truncate_dim, batch_size=args.batch_size
            )
            if args.images:
                ids = [str(path) for path in args.images]
                vectors = client.embed_images(args.model, args.images, **options)
            else:
                ids = [
                    line
                    for line in args.texts.read_text(encoding="utf-8").splitlines()
                    if line.strip()
                ]
                if not ids:
                    raise EmbedderError(f"{args.texts} has no non-empty line to embed")
                vectors = client.embed_texts(args.model, ids, **options)
        write_output(args.out, ids, vectors)
        print(f"wrote {vectors.shape[0]} x {vectors.shape[1]} embeddings to {args.out}")
    except grpc.RpcError as exc:
        print(f"embedder-client: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except (EmbedderError, OSError, UnicodeDecodeError) as exc:
        print(f"embedder-client: error: {exc}", file=sys.stderr)
        return 2
    return 0
