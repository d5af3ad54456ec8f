"""The ledger of one export run, the same for every engine: duplicates counted once, failures
recorded once however often a run is repeated, the run's members (key -> label, source) kept
in input order, embedded rows written to the cache in shards, progress shown.

A model exported at several layers has one cache dataset per cut point; they are written
together, row for row, and an item counts as cached only when every one of them holds it."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from embedder.cache import CacheIdentity, CacheWriter, EmbeddingCache
from embedder.core.manifest import Manifest
from embedder.features.config import Summary


def dataset_caches(root: Path, manifest: Manifest,
                   identities: list[CacheIdentity]) -> dict[str, EmbeddingCache]:  # fmt: skip
    """layer -> the dataset of that cut point (one for a model exported at one layer)."""
    layers = [o.layer for o in manifest.feature_outputs()]
    return {layer: EmbeddingCache(root, identity)
            for layer, identity in zip(layers, identities, strict=True)}  # fmt: skip


class RunLedger:
    def __init__(self, caches: dict[str, EmbeddingCache], total: int, shard_rows: int,
                 progress: bool):  # fmt: skip
        """`caches`: layer -> its dataset, shallowest first (the last is `features`)."""
        from tqdm import tqdm

        self.layers, caches = list(caches), list(caches.values())
        self.caches = caches
        self.bar = tqdm(total=total, unit="item", disable=not progress, smoothing=0.1,
                        dynamic_ncols=True)  # fmt: skip
        self.writers = [CacheWriter(cache, shard_rows) for cache in caches]
        self.summary = Summary(total=total, dataset=caches[-1].folder)
        self.started = time.perf_counter()
        self.known: set[str] = set.intersection(*(cache.keys for cache in caches))
        self._seen: set[str] = set()
        self._members: dict[str, tuple[str | None, str]] = {}

    def admit(self, key: str, label: str | None, source: str, error: str | None) -> bool:
        """Record an item as it comes, in input order; True when it still needs embedding."""
        self.bar.update(1)
        if key and key in self._seen:
            self.summary.duplicates += 1
            return False
        self._seen.add(key)
        if error is not None:
            self._fail(key, source, error)
            return False
        self._members[key] = (label, source)
        if key in self.known:
            self.summary.from_cache += 1
            return False
        return True

    def embedded(self, key: str, vectors: list[np.ndarray], label: str | None,
                 source: str) -> None:  # fmt: skip
        """An item's vector for each cut point (one for a single-output model)."""
        self.summary.embedded += 1
        for writer, vector in zip(self.writers, vectors, strict=True):
            writer.add(key, vector, label, source)

    def failed(self, key: str, source: str, reason: str) -> None:
        """An admitted item the model could not embed after all (e.g. the server refused it)."""
        self._fail(key, source, reason)
        self._members.pop(key, None)

    def _fail(self, key: str, source: str, reason: str) -> None:
        self.summary.failed += 1
        kind = reason.split(":")[0][:80]  # "cannot decode image: ..." counts as one reason
        self.summary.reasons[kind] = self.summary.reasons.get(kind, 0) + 1
        for writer in self.writers:
            writer.fail(key, source, reason)

    def flush(self) -> None:
        """Write what is buffered and close the progress bar: on the way out, failed runs too."""
        self.bar.close()
        for writer in self.writers:
            writer.flush()

    def finish(self, run_name: str) -> Summary:
        self.flush()
        self.summary.keys = list(self._members)
        runs = [cache.write_run(run_name, self._members) for cache in self.caches]
        self.summary.run_file = runs[-1]
        if len(self.caches) > 1:
            self.summary.layers = dict(zip(self.layers, runs, strict=True))
        self.summary.seconds = time.perf_counter() - self.started
        return self.summary
