"""The engine's configuration: batching, preprocessing and limits, filled from CLI flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from embedder.core.config import SessionConfig, check_ranges
from embedder.core.preprocess import DEFAULT_MAX_PIXELS


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
    # With single-threaded streams on a CPU, a lone request too small to split (alone in its
    # batch, nothing queued, every stream free) runs on a second session of the model with all
    # the streams' threads, so it uses every core (the price: the model's weights held twice).
    lone_batch_all_cores: bool = True

    def __post_init__(self) -> None:
        check_ranges(self, at_least_one=("max_batch_size", "max_queue_size"),
                     not_negative=("max_queue_delay_ms", "returning_wait_ms",
                                   "inference_streams"))  # fmt: skip


@dataclass(frozen=True)
class EngineConfig:
    repository: Path = Path("models")
    models: tuple[str, ...] = ()  # serve only these models of the repository (empty: all)
    session: SessionConfig = field(default_factory=SessionConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    preprocess_threads: int = max(2, os.cpu_count() or 2)
    max_items_per_request: int = 256
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    cache: Path | None = None  # embedding cache root shared with batch export; hits skip compute
    cache_shard_rows: int = 256
    warmup: bool = True

    def __post_init__(self) -> None:
        check_ranges(self, ("preprocess_threads", "max_items_per_request", "max_image_pixels",
                            "cache_shard_rows"))  # fmt: skip


GPU_STREAMS = 2


def thread_defaults(config: EngineConfig) -> EngineConfig:
    """The automatic (0) thread settings made concrete: on a CPU, one single-threaded
    inference stream per core; on a GPU, two streams, so one batch's copies overlap the other's
    compute (two callers ran 1.4-1.5x one on an H200); the cores shared among the streams. A
    GPU provider this onnxruntime lacks fails here, once, before any model is loaded."""
    from embedder.core.runtime import gpu_planned

    on_gpu = gpu_planned(config.session.provider)
    cores = len(os.sched_getaffinity(0))
    streams = config.batching.inference_streams or (GPU_STREAMS if on_gpu else cores)
    threads = config.session.intra_op_threads or max(1, cores // streams)
    return replace(
        config,
        session=replace(config.session, intra_op_threads=threads),
        batching=replace(config.batching, inference_streams=streams),
    )
