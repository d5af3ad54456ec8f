"""One served model: its session, preprocessing, dynamic batcher, cache and metric series."""

from __future__ import annotations

from dataclasses import replace

from embedder.core.batch_parts import CPU_IMAGE_BATCH, in_chunks
from embedder.core.inputs import Preprocessor
from embedder.core.runtime import ModelSession, open_session
from embedder.engine.batcher import DynamicBatcher
from embedder.engine.cache_lookup import ModelCache
from embedder.engine.config import EngineConfig
from embedder.engine.metrics import Metrics

SPLIT_MIN_ITEMS = 4  # smallest part of a batch split across streams (CNNs: fastest per image)


class LoadedModel:
    def __init__(self, session: ModelSession, config: EngineConfig, metrics: Metrics):
        m = session.manifest
        self.session, self.manifest, self.key = session, m, f"{m.name}/{m.version}"
        self.preprocessor = Preprocessor(m, session.folder, config.max_image_pixels)

        # Each model's metric series, looked up once instead of on every request.
        self.items_total = metrics.items.labels(self.key)
        self.preprocess_ms = metrics.stage_ms.labels(self.key, "preprocess")
        self.queue_ms = metrics.stage_ms.labels(self.key, "queue")
        batch_size, inference, inference_cpu = (
            metrics.batch_size.labels(self.key),
            metrics.stage_ms.labels(self.key, "inference"),
            metrics.inference_cpu.labels(self.key),
        )

        def on_batch(items: int, inference_ms: float, cpu_seconds: float) -> None:
            batch_size.observe(items)
            inference.observe(inference_ms)
            inference_cpu.inc(cpu_seconds)

        # Single-threaded streams on a CPU: a batch alone is split across the free streams.
        streams = config.batching.inference_streams
        single = config.session.intra_op_threads == 1 and streams > 1 and not session.on_gpu
        split = SPLIT_MIN_ITEMS if single else 0
        # The batcher groups requests into batches of up to max_batch_size; an image model on
        # a CPU then runs them in chunks of the size it is fastest at.
        run, run_wide = session.run, None
        if single and config.batching.lone_batch_all_cores:  # a lone request on every core
            threads = replace(config.session, intra_op_threads=streams)
            run_wide = open_session(session.folder, m, threads).run
        if m.modality == "image" and not session.on_gpu:
            run = in_chunks(session.run, CPU_IMAGE_BATCH)
            run_wide = run_wide and in_chunks(run_wide, CPU_IMAGE_BATCH)
        # Text on a CPU: batches formed by padded tokens, requests of similar length together.
        budget = session.max_batch_tokens if m.modality == "text" else 0
        self.batcher = DynamicBatcher(self.key, run, self.preprocessor.collate, config.batching,
                                      on_batch, split, run_wide, budget)  # fmt: skip
        self.cache: ModelCache | None = None
        if config.cache is not None and not m.heads:  # the cache holds embeddings only
            self.cache = ModelCache(config.cache, session, config.cache_shard_rows)

    def warm_up(self) -> None:
        self.session.warm_up(self.preprocessor.collate([self.preprocessor.blank()] * 2))
