"""Writing to the cache in shards: rows buffered until a shard is full, failures recorded once."""

from __future__ import annotations

import numpy as np

from embedder.cache.store import EmbeddingCache, failure_id


class CacheWriter:
    """Buffers rows and writes a shard every `shard_rows`; failures go to their own table."""

    def __init__(self, cache: EmbeddingCache, shard_rows: int):
        self.cache, self.shard_rows = cache, shard_rows
        self.rows: list[tuple[str, np.ndarray, str | None, str | None]] = []
        self.failures: list[tuple[str, str, str]] = []
        self._buffered: set[str] = set()

    def add(self, key: str, vector: np.ndarray, label: str | None, source: str | None) -> None:
        if key in self.cache.keys or key in self._buffered:  # two requests raced on one input
            return
        self._buffered.add(key)
        self.rows.append((key, vector, label, source))
        if len(self.rows) >= self.shard_rows:
            self.flush()

    def fail(self, key: str, source: str, reason: str) -> None:
        if failure_id(key, source) in self.cache.failed:  # failed before: retried, recorded once
            return
        self.failures.append((key, source, reason))

    def flush(self) -> None:
        if self.rows:
            keys, vectors, labels, sources = zip(*self.rows, strict=True)
            self.cache.append(list(keys), np.stack(vectors), list(labels), list(sources))
            self.rows, self._buffered = [], set()
        if self.failures:
            self.cache.append_failures(self.failures)
            self.failures = []
