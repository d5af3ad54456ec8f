"""The embedding cache seen from the engine: a hit skips preprocessing and compute.

Same folders and keys as batch export, so a dataset exported offline is served from the cache
and what the server computes is there for the next export.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import numpy as np

from embedder.cache import CacheIdentity, CacheWriter, EmbeddingCache, content_key
from embedder.core.inputs import RawItem
from embedder.core.runtime import ModelSession

log = logging.getLogger(__name__)


def item_key(item: RawItem) -> str:
    """The cache key of an item: sha256 of its bytes (a text: its UTF-8; pixels: dtype, shape
    and little-endian bytes, as they travel)."""
    if item.kind == "tensor":
        a = item.value
        data = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        return content_key(f"tensor:{a.dtype.name}:{list(a.shape)}:".encode() + data)
    return content_key(item.value)


class ModelCache:
    """One model's rows of the cache, in memory for lookups, written back in shards."""

    def __init__(self, root: Path, session: ModelSession, shard_rows: int):
        self.cache = EmbeddingCache(root, CacheIdentity.of_session(session))
        self.vectors: dict[str, np.ndarray] = self.cache.lookup()
        self.writer = CacheWriter(self.cache, shard_rows)
        self._lock = threading.Lock()

    def find(self, items: list[RawItem]) -> tuple[list[str], dict[int, np.ndarray]]:
        keys = [item_key(item) for item in items]
        hits = {i: self.vectors[k] for i, k in enumerate(keys) if k and k in self.vectors}
        return keys, hits

    async def store(self, keys: list[str], vectors: np.ndarray) -> None:
        """Remember computed rows; shards are written off the event loop. Best effort: a cache
        that cannot be written (disk full) is logged and never fails the request."""
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._store, keys, vectors)
        except OSError as exc:
            log.error("embedding cache %s not written: %s", self.cache.folder, exc)

    def _store(self, keys: list[str], vectors: np.ndarray) -> None:
        with self._lock:
            for key, vector in zip(keys, vectors, strict=True):
                if key and key not in self.vectors:
                    self.vectors[key] = vector.copy()
                    self.writer.add(key, vector, None, None)

    def flush(self) -> None:
        with self._lock:
            try:
                self.writer.flush()
            except OSError as exc:
                log.error("embedding cache %s not written: %s", self.cache.folder, exc)
