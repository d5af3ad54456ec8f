"""Batch feature export: embed a whole dataset with one model into the embedding cache.

Engines, registered by name: `local` (the model's session in this process: one pool of
worker threads reads, decodes or tokenises ahead and runs the inference batches, one
onnxruntime thread each), `server` (a running embedder-serve does the work), `ray` (Ray Data,
one session per actor; imported only when asked for). All share the reading, hashing,
deduplication, failure handling and cache writing (prepare.py, ledger.py), so a kill -9 at any
moment and a rerun end with the rows of a clean run; one bad item fails alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack

import numpy as np

from embedder.core.errors import EmbedderError
from embedder.core.sources import SourceItem
from embedder.features.config import FeaturesConfig, Summary, batch_size_for, worker_count
from embedder.features.ledger import RunLedger, dataset_caches
from embedder.features.local import LocalEngine
from embedder.features.prepare import (
    Prepared,
    check_modality,
    make_preparer,
    prepare_in_worker,
    prepare_stream,
    process_pool,
)
from embedder.features.remote import ServerEngine

Runner = Callable[[list[SourceItem], FeaturesConfig], Summary]


def _ray(items: list[SourceItem], config: FeaturesConfig) -> Summary:
    from embedder.features.ray import export_with_ray  # Ray is an extra: imported when used

    return export_with_ray(items, config)


ENGINES: dict[str, Runner] = {
    "local": lambda items, config: run_pooled(items, config, LocalEngine(config)),
    "server": lambda items, config: run_pooled(items, config, ServerEngine(config)),
    "ray": _ray,
}


def export_features(items: Iterable[SourceItem], config: FeaturesConfig) -> Summary:
    """Embed every item not already cached; returns what happened."""
    if not config.model:
        raise EmbedderError("no model given: name one of the repository's (--model)")
    return ENGINES[config.engine](list(items), config)


def run_pooled(items: list[SourceItem], config: FeaturesConfig, engine) -> Summary:
    """One pool of worker threads prepares items and runs the engine's batches, whichever is
    next, so decoding and inference never fight over a core; this loop only deduplicates and
    records results, in input order."""
    check_modality(items, engine.manifest)
    datasets = dataset_caches(config.cache, engine.manifest, engine.identities)
    ledger = RunLedger(datasets, len(items), config.shard_rows, config.progress)
    known = ledger.known
    batch_size = batch_size_for(config, engine.manifest)
    with ExitStack() as stack:
        stack.callback(engine.close)
        stack.callback(ledger.flush)  # whatever was embedded survives an aborted run
        pool = ThreadPoolExecutor(worker_count(config), thread_name_prefix="export")
        stack.callback(pool.shutdown, cancel_futures=True)  # a failed run leaves nothing queued
        if engine.prepare_in_processes:  # the threads then only run inference batches
            preparers = process_pool(engine.folder, config.max_image_pixels, known,
                                     worker_count(config))  # fmt: skip
            stack.callback(preparers.shutdown, cancel_futures=True)
            run_part = prepare_in_worker
        else:
            preparers, prepare = pool, make_preparer(engine.manifest, engine.preprocessor, known)

            def run_part(part: list[SourceItem]) -> list[Prepared]:
                return [prepare(item) for item in part]

        in_flight: list[tuple[list[Prepared], Future]] = []

        def submit(batch: list[Prepared]) -> None:
            in_flight.append((batch, pool.submit(engine.embed, batch)))
            while len(in_flight) > engine.in_flight or (in_flight and in_flight[0][1].done()):
                done, future = in_flight.pop(0)
                record(ledger, done, *future.result())

        batch: list[Prepared] = []
        for p in prepare_stream(items, run_part, preparers, max(64, batch_size * 4)):
            if ledger.admit(p.key, p.item.label, p.item.source, p.error):
                batch.append(p)
                if len(batch) >= batch_size:
                    submit(batch)
                    batch = []
        if batch:
            submit(batch)
        for done, future in in_flight:
            record(ledger, done, *future.result())
    return ledger.finish(config.run_name)


def record(ledger: RunLedger, batch: list[Prepared], vectors: list[np.ndarray],
           failures) -> None:  # fmt: skip
    """A batch's results (a matrix per cut point): its rows embedded, except those the engine
    failed (index, reason)."""
    failed = dict(failures)
    for i, reason in failures:
        ledger.failed(batch[i].key, batch[i].item.source, reason)
    done = [p for i, p in enumerate(batch) if i not in failed]
    for row, p in enumerate(done):
        ledger.embedded(p.key, [v[row] for v in vectors], p.item.label, p.item.source)
