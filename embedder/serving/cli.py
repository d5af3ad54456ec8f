"""embedder-serve: the command line of the server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from embedder.core import cli
from embedder.core.config import SessionConfig
from embedder.core.errors import ConfigError, EmbedderError
from embedder.engine.config import BatchingConfig, EngineConfig
from embedder.serving.config import ServerConfig

EXAMPLES = """\
  embedder-serve --repo models                                  # every model, loopback only
  embedder-serve --models minilm_l6,mobilenet_v2 --http-address 127.0.0.1:8080
  EMBEDDER_TOKEN=s3cret embedder-serve --address 0.0.0.0:50051 --tls-cert c.pem --tls-key k.pem
  embedder-serve --cpu-precision int8 --metrics-address 9100 --drain-seconds 30
  embedder-serve --models minilm_l6 --workers 2 --http-address 127.0.0.1:8080
"""
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def serve_parser() -> argparse.ArgumentParser:
    d, e, s, b = ServerConfig(), EngineConfig(), SessionConfig(), BatchingConfig()
    p = cli.parser(
        "embedder-serve",
        "Serve a model repository: embedder.v1 and KServe v2 over "
        "gRPC; the OpenAI embeddings API and KServe v2 REST over HTTP.",
        EXAMPLES,
    )
    cli.add_repo(p)
    p.add_argument(
        "--models",
        default="",
        help="serve only these models, comma-separated (default: every model in --repo)",
    )
    p.add_argument(
        "--address", default=d.address, help="gRPC HOST:PORT (loopback unless a host is given)"
    )
    p.add_argument(
        "--http-address",
        help="HTTP HOST:PORT for OpenAI /v1 and KServe v2 /v2 "
        "(off unless given; e.g. 127.0.0.1:8080)",
    )
    cli.add_token(p, "require 'authorization: Bearer <token>' on every call but the probes")
    p.add_argument(
        "--auth-token",
        dest="token",
        action=cli.deprecated("--auth-token", "--token"),
        help=argparse.SUPPRESS,
    )
    p.add_argument("--tls-cert", type=Path, help="PEM certificate: serve TLS (with --tls-key)")
    p.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    p.add_argument(
        "--provider",
        default=s.provider,
        choices=("auto", "cpu", "cuda", "tensorrt"),
        help="execution provider; cuda and tensorrt refuse to fall back to the CPU",
    )
    p.add_argument(
        "--cpu-precision",
        default=s.cpu_precision,
        choices=("fp32", "int8"),
        help="the file served on a CPU (int8: where exported; its gate is logged)",
    )
    numbers = (  # flag, default (its type is the flag's), help
        ("--intra-op-threads", s.intra_op_threads,
         "onnxruntime threads per session (0: the cores shared among streams)"),
        ("--preprocess-threads", e.preprocess_threads,
         "threads decoding images and tokenising texts"),
        ("--max-batch-size", b.max_batch_size, "items per inference batch"),
        ("--max-queue-delay-ms", b.max_queue_delay_ms,
         "how long the oldest queued item waits for company"),
        ("--max-queue-size", b.max_queue_size,
         "items waiting per model; beyond it, RESOURCE_EXHAUSTED / 429"),
        ("--returning-wait-ms", b.returning_wait_ms,
         "after a batch, wait this long for its callers' next requests"),
        ("--inference-streams", b.inference_streams,
         "batches run side by side per model (0: one single-threaded stream per core on a "
         "CPU, a lone batch split across them; one on a GPU)"),
        ("--max-batch-tokens", s.max_batch_tokens,
         "text models: run a batch in parts of at most this many padded tokens, similar "
         "lengths together (0: 2048 on a CPU, no limit on a GPU)"),
        ("--max-items-per-request", e.max_items_per_request, "items one request may carry"),
        ("--max-message-bytes", d.max_message_bytes, "largest request or answer, gRPC and HTTP"),
        ("--max-image-pixels", e.max_image_pixels,
         "larger images are refused before decoding (decompression bombs)"),
        ("--workers", d.workers, "server processes sharing the ports (SO_REUSEPORT) under a "
         "supervisor that restarts one that dies; 1 suits a CPU serving heavy models, where "
         "onnxruntime already uses every core"),
    )  # fmt: skip
    for flag, default, help in numbers:
        p.add_argument(flag, type=type(default), default=default, help=help)
    p.add_argument(
        "--lone-batch-one-core",
        action="store_true",
        help="run a lone unsplittable batch on one core (default: on every core, "
        "from a second session of the model: its weights held twice)",
    )
    p.add_argument(
        "--metrics-address",
        help="serve Prometheus /metrics at HOST:PORT, or PORT on loopback (off unless "
        "given; no auth or TLS: expose it beyond loopback only on a trusted network)",
    )
    p.add_argument(
        "--metrics-port",
        dest="metrics_address",
        action=cli.deprecated("--metrics-port", "--metrics-address"),
        help=argparse.SUPPRESS,
    )
    p.add_argument(
        "--cache",
        type=Path,
        help="embedding cache folder shared with batch export "
        "(hits skip inference; off unless given)",
    )
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=d.drain_seconds,
        help="on SIGTERM: health NOT_SERVING and new calls refused for this long "
        "while calls in flight finish; then what still runs is cancelled",
    )
    p.add_argument(
        "--read-timeout-seconds",
        type=float,
        default=d.read_timeout_seconds,
        help="HTTP: a request's headers, then its body, must each arrive within this",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help="log messages from this level up",
    )
    return p


def serve_config(args: argparse.Namespace) -> ServerConfig:
    session = SessionConfig(
        provider=args.provider,
        cpu_precision=args.cpu_precision,
        intra_op_threads=args.intra_op_threads,
        max_batch_tokens=args.max_batch_tokens,
    )
    batching = BatchingConfig(
        args.max_batch_size,
        args.max_queue_delay_ms,
        returning_wait_ms=args.returning_wait_ms,
        lone_batch_all_cores=not args.lone_batch_one_core,
        max_queue_size=args.max_queue_size,
        inference_streams=args.inference_streams,
    )
    models = tuple(m for m in args.models.split(",") if m)
    engine = EngineConfig(
        repository=args.repo,
        models=models,
        session=session,
        batching=batching,
        preprocess_threads=args.preprocess_threads,
        max_items_per_request=args.max_items_per_request,
        max_image_pixels=args.max_image_pixels,
        cache=args.cache,
    )
    return ServerConfig(
        engine=engine,
        address=args.address,
        http_address=args.http_address,
        max_message_bytes=args.max_message_bytes,
        metrics_address=args.metrics_address,
        auth_token=cli.token(args),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        drain_seconds=args.drain_seconds,
        read_timeout_seconds=args.read_timeout_seconds,
        workers=args.workers,
    )


def serve_main(argv: list[str] | None = None) -> int:
    from embedder.serving.server import serve_forever

    args = serve_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = serve_config(args)
        if config.workers > 1:
            from embedder.serving.workers import Supervisor

            return Supervisor(config, args.log_level).run()
        asyncio.run(serve_forever(config))
    except ConfigError as exc:
        print(f"embedder-serve: error: {exc.for_flags()}", file=sys.stderr)
        return 2
    except EmbedderError as exc:
        print(f"embedder-serve: error: {exc}", file=sys.stderr)
        return 2
    return 0
