"""Server configuration: one frozen dataclass, filled from CLI flags in `embedder-serve`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from embedder.core.errors import ConfigError
from embedder.core.preprocess import DEFAULT_MAX_PIXELS

Provider = Literal["auto", "cpu", "cuda", "tensorrt"]


def check_ranges(config, at_least_one=(), not_negative=()) -> None:
    """Refuse a setting out of range (NaN included) with its name, before anything starts."""
    for name in at_least_one:
        if not getattr(config, name) >= 1:
            raise ConfigError(f"{name} must be at least 1, got {getattr(config, name)}")
    for name in not_negative:
        if not getattr(config, name) >= 0:
            raise ConfigError(f"{name} must be 0 or more, got {getattr(config, name)}")


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 32
    # How long the oldest item waits for company. 0: a batch leaves as soon as the model is
    # free; under load the next batch fills while the current one runs.
    max_queue_delay_ms: float = 0.0
    # After a batch, wait up to this long for its callers' next requests when fewer items are
    # queued than it held (steady concurrent clients then fill whole batches; a lone client
    # never waits, its last batch held only its own item).
    returning_wait_ms: float = 5.0
    max_queue_size: int = 1024  # items waiting per model; beyond it: RESOURCE_EXHAUSTED
    # Batches that run side by side on one session. 0: automatic, one single-threaded stream
    # per core on a CPU (a batch that comes alone is split across the free streams, so it still
    # uses every core), one on a GPU. One stream with every core is lower latency for a lone
    # single-item request, slower under load (benchmark in the README).
    inference_streams: int = 0

    def __post_init__(self) -> None:
        check_ranges(self, at_least_one=("max_batch_size", "max_queue_size"),
                     not_negative=("max_queue_delay_ms", "returning_wait_ms",
                                   "inference_streams"))  # fmt: skip


@dataclass(frozen=True)
class ServerConfig:
    repository: Path = Path("models")
    address: str = "127.0.0.1:50051"
    provider: Provider = "auto"
    cpu_precision: Literal["fp32", "int8"] = "fp32"  # int8 only where the variant exists
    intra_op_threads: int = 0  # onnxruntime threads per session; 0: the cores / the streams
    preprocess_threads: int = max(2, os.cpu_count() or 2)
    batching: BatchingConfig = BatchingConfig()
    # A text model's batch runs in parts of at most this many padded tokens, texts of similar
    # length together. 0: automatic, 2048 on a CPU (bounded memory, no padding paid for a
    # longer text), none on a GPU.
    max_batch_tokens: int = 0
    max_items_per_request: int = 256
    max_message_bytes: int = 64 * 1024 * 1024
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    metrics_port: int | None = None  # Prometheus /metrics on this port when set
    auth_token: str | None = None  # require "authorization: Bearer <token>" when set
    tls_cert: Path | None = None
    tls_key: Path | None = None
    cache: Path | None = None  # embedding cache root shared with batch export; hits skip compute
    cache_shard_rows: int = 256
    drain_seconds: float = 10.0  # grace period for in-flight requests on SIGTERM
    warmup: bool = True

    def __post_init__(self) -> None:
        positive = ("preprocess_threads", "max_items_per_request", "max_message_bytes",
                    "max_image_pixels", "cache_shard_rows")  # fmt: skip
        check_ranges(self, positive, not_negative=("intra_op_threads", "drain_seconds",
                                                   "max_batch_tokens"))  # fmt: skip
