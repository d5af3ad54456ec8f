"""The ledger of one export run, the same for every engine: duplicates counted once, failures
recorded once however often a run is repeated, the run's members (key -> label, source) kept
in input order, embedded rows written to the cache in shards, progress shown."""

from __future__ import annotations

import time

import numpy as np

from embedder.cache import CacheWriter, EmbeddingCache
from embedder.features.config import Summary


class RunLedger:
    def __init__(self, cache: EmbeddingCache, total: int, shard_rows: int, progress: bool):
        from tqdm import tqdm

        self.cache = cache
        self.bar = tqdm(total=total, unit="item", disable=not progress, smoothing=0.1,
                        dynamic_ncols=True)  # fmt: skip
        self.writer = CacheWriter(cache, shard_rows)
        self.summary = Summary(total=total, dataset=cache.folder)
        self.started = time.perf_counter()
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
            self.summary.failed += 1
            self.writer.fail(key, source, error)
            return False
        self._members[key] = (label, source)
        if key in self.cache.keys:
            self.summary.from_cache += 1
            return False
        return True

    def embedded(self, key: str, vector: np.ndarray, label: str | None, source: str) -> None:
        self.summary.embedded += 1
        self.writer.add(key, vector, label, source)

    def failed(self, key: str, source: str, reason: str) -> None:
        """An admitted item the model could not embed after all (e.g. the server refused it)."""
        self.summary.failed += 1
        self.writer.fail(key, source, reason)
        self._members.pop(key, None)

    def flush(self) -> None:
        """Write what is buffered and close the progress bar: on the way out, failed runs too."""
        self.bar.close()
        self.writer.flush()

    def finish(self, run_name: str) -> Summary:
        self.flush()
        self.summary.keys = list(self._members)
        self.summary.run_file = self.cache.write_run(run_name, self._members)
        self.summary.seconds = time.perf_counter() - self.started
        return self.summary
