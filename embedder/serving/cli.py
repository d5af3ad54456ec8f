"""embedder-serve: the command line of the server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from embedder.core.config import SessionConfig
from embedder.core.errors import EmbedderError
from embedder.engine.config import BatchingConfig, EngineConfig
from embedder.serving.config import ServerConfig


def serve_parser() -> argparse.ArgumentParser:
    d, e, s, b = ServerConfig(), EngineConfig(), SessionConfig(), BatchingConfig()
    p = argparse.ArgumentParser(
        prog="embedder-serve", description="Serve a model repository over gRPC."
    )
    p.add_argument("--repo", type=Path, default=e.repository, help="model repository folder")
    p.add_argument("--address", default=d.address, help="host:port (default: loopback only)")
    p.add_argument(
        "--http-address",
        help="host:port for HTTP: OpenAI /v1/embeddings and KServe v2 /v2 (off unless given; "
        "e.g. 127.0.0.1:8080)",
    )
    p.add_argument("--provider", default=s.provider, choices=("auto", "cpu", "cuda", "tensorrt"))
    p.add_argument("--cpu-precision", default=s.cpu_precision, choices=("fp32", "int8"))
    p.add_argument(
        "--intra-op-threads",
        type=int,
        default=s.intra_op_threads,
        help="onnxruntime threads per model session (0: the cores shared among the streams)",
    )
    p.add_argument("--preprocess-threads", type=int, default=e.preprocess_threads)
    p.add_argument("--max-batch-size", type=int, default=b.max_batch_size)
    p.add_argument("--max-queue-delay-ms", type=float, default=b.max_queue_delay_ms)
    p.add_argument("--max-queue-size", type=int, default=b.max_queue_size, help="items per model")
    p.add_argument("--returning-wait-ms", type=float, default=b.returning_wait_ms)
    p.add_argument("--lone-batch-one-core", action="store_true",
                   help="run a lone unsplittable batch on one core (default: on every core, "
                   "from a second session of the model: its weights held twice)")  # fmt: skip
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
        default=s.max_batch_tokens,
        help="text models: run a batch in parts of at most this many padded tokens, similar "
        "lengths together (0: 2048 on a CPU, no limit on a GPU)",
    )
    p.add_argument("--max-items-per-request", type=int, default=e.max_items_per_request)
    p.add_argument("--max-message-bytes", type=int, default=d.max_message_bytes)
    p.add_argument("--max-image-pixels", type=int, default=e.max_image_pixels)
    p.add_argument(
        "--metrics-address",
        help="serve Prometheus /metrics at HOST:PORT, or PORT on loopback (off unless "
        "given; no auth or TLS: expose it beyond loopback only on a trusted network)",
    )
    p.add_argument("--auth-token",
                   help="require 'authorization: Bearer <token>' on every call but the health "
                   "probes")  # fmt: skip
    p.add_argument("--tls-cert", type=Path)
    p.add_argument("--tls-key", type=Path)
    p.add_argument("--cache", type=Path, help="embedding cache folder (shared with batch export)")
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=d.drain_seconds,
        help="on SIGTERM: health NOT_SERVING and new calls refused for this long while "
        "calls in flight finish; then what still runs is cancelled and the process "
        "exits",
    )
    p.add_argument(
        "--read-timeout-seconds",
        type=float,
        default=d.read_timeout_seconds,
        help="HTTP: a request's headers, then its body, must each arrive within this",
    )
    p.add_argument("--log-level", default="INFO")
    return p


def serve_config(args: argparse.Namespace) -> ServerConfig:
    session = SessionConfig(provider=args.provider, cpu_precision=args.cpu_precision,
                            intra_op_threads=args.intra_op_threads,
                            max_batch_tokens=args.max_batch_tokens)  # fmt: skip
    batching = BatchingConfig(args.max_batch_size, args.max_queue_delay_ms,
                              returning_wait_ms=args.returning_wait_ms,
                              lone_batch_all_cores=not args.lone_batch_one_core,
                              max_queue_size=args.max_queue_size,
                              inference_streams=args.inference_streams)  # fmt: skip
    engine = EngineConfig(repository=args.repo, session=session, batching=batching,
                          preprocess_threads=args.preprocess_threads,
                          max_items_per_request=args.max_items_per_request,
                          max_image_pixels=args.max_image_pixels, cache=args.cache)  # fmt: skip
    return ServerConfig(engine=engine, address=args.address, http_address=args.http_address,
                        max_message_bytes=args.max_message_bytes,
                        metrics_address=args.metrics_address, auth_token=args.auth_token,
                        tls_cert=args.tls_cert, tls_key=args.tls_key,
                        drain_seconds=args.drain_seconds,
                        read_timeout_seconds=args.read_timeout_seconds)  # fmt: skip


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
