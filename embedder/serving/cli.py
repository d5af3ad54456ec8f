"""embedder-serve and embedder-client."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

import numpy as np

from embedder.core.config import BatchingConfig, ServerConfig
from embedder.core.errors import EmbedderError


def serve_parser() -> argparse.ArgumentParser:
    d, b = ServerConfig(), BatchingConfig()
    p = argparse.ArgumentParser(
        prog="embedder-serve", description="Serve a model repository over gRPC."
    )
    p.add_argument("--repo", type=Path, default=d.repository, help="model repository folder")
    p.add_argument("--address", default=d.address, help="host:port (default: loopback only)")
    p.add_argument("--provider", default=d.provider, choices=("auto", "cpu", "cuda", "tensorrt"))
    p.add_argument("--cpu-precision", default=d.cpu_precision, choices=("fp32", "int8"))
    p.add_argument(
        "--intra-op-threads",
        type=int,
        default=d.intra_op_threads,
        help="onnxruntime threads per model session (0: the cores shared among the streams)",
    )
    p.add_argument("--preprocess-threads", type=int, default=d.preprocess_threads)
    p.add_argument("--max-batch-size", type=int, default=b.max_batch_size)
    p.add_argument("--max-queue-delay-ms", type=float, default=b.max_queue_delay_ms)
    p.add_argument("--max-queue-size", type=int, default=b.max_queue_size, help="items per model")
    p.add_argument("--returning-wait-ms", type=float, default=b.returning_wait_ms)
    p.add_argument(
        "--inference-streams",
        type=int,
        default=b.inference_streams,
        help="batches run side by side per model (0: one single-threaded stream per core on a "
        "CPU, a lone batch split across them; one on a GPU)",
    )
    p.add_argument(
        "--max-batch-tokens",
        type=int,
        default=d.max_batch_tokens,
        help="text models: run a batch in parts of at most this many padded tokens, similar "
        "lengths together (0: 2048 on a CPU, no limit on a GPU)",
    )
    p.add_argument("--max-items-per-request", type=int, default=d.max_items_per_request)
    p.add_argument("--max-message-bytes", type=int, default=d.max_message_bytes)
    p.add_argument("--max-image-pixels", type=int, default=d.max_image_pixels)
    p.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
    p.add_argument("--auth-token", help="require 'authorization: Bearer <token>'")
    p.add_argument("--tls-cert", type=Path)
    p.add_argument("--tls-key", type=Path)
    p.add_argument("--cache", type=Path, help="embedding cache folder (shared with batch export)")
    p.add_argument("--drain-seconds", type=float, default=d.drain_seconds)
    p.add_argument("--log-level", default="INFO")
    return p


def serve_config(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        repository=args.repo, address=args.address, provider=args.provider,
        cpu_precision=args.cpu_precision, intra_op_threads=args.intra_op_threads,
        preprocess_threads=args.preprocess_threads,
        batching=BatchingConfig(args.max_batch_size, args.max_queue_delay_ms,
                                returning_wait_ms=args.returning_wait_ms,
                                max_queue_size=args.max_queue_size,
                                inference_streams=args.inference_streams),
        max_batch_tokens=args.max_batch_tokens,
        max_items_per_request=args.max_items_per_request, max_message_bytes=args.max_message_bytes,
        max_image_pixels=args.max_image_pixels, metrics_port=args.metrics_port,
        auth_token=args.auth_token, tls_cert=args.tls_cert, tls_key=args.tls_key,
        drain_seconds=args.drain_seconds, cache=args.cache,
    )  # fmt: skip


def serve_main(argv: list[str] | None = None) -> int:
    from embedder.serving.server import serve_forever

    args = serve_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        asyncio.run(serve_forever(serve_config(args)))
    except EmbedderError as exc:
        print(f"embedder-serve: error: {exc}", file=sys.stderr)
        return 2
    return 0


OUTPUT_SUFFIXES = (".npy", ".parquet")


def write_output(path: Path, ids: list[str], embeddings: np.ndarray) -> None:
    if path.suffix == ".npy":
        np.save(path, embeddings)
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        flat = pa.array(embeddings.reshape(-1), pa.float32())
        column = pa.FixedSizeListArray.from_arrays(flat, embeddings.shape[1])
        pq.write_table(pa.table({"source": ids, "embedding": column}), path)
    else:
        raise EmbedderError(f"output {path}: use a .npy or .parquet file name")


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
    args = p.parse_args(argv)
    if args.command == "embed" and args.out.suffix not in OUTPUT_SUFFIXES:
        p.error(f"--out {args.out}: use a .npy or .parquet file name")
    try:
        root_cert = args.root_cert.read_bytes() if args.root_cert else None
        with EmbedderClient(args.server, token=args.token, root_cert=root_cert) as client:
            if args.command == "models":
                for m in client.list_models():
                    print(
                        f"{m.name}/{m.version}\t{m.modality}\t{m.dim}\t{m.precision}\t{','.join(m.providers)}"
                    )
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
