"""The embedding cache seen from the server: a hit skips preprocessing and compute.

Same folders and keys as batch export, so a dataset exported offline is served from the cache
and what the server computes is there for the next export.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import numpy as np

from embedder.cache.store import EmbeddingCache, content_key
from embedder.core.runtime import ModelSession
from embedder.features.run import CacheWriter, identity_for
from protos.embedder.v1 import embedder_pb2 as pb

log = logging.getLogger(__name__)


def item_key(item: pb.Item) -> str:
    kind = item.WhichOneof("input")
    if kind == "image":
        return content_key(item.image)
    if kind == "text":
        return content_key(item.text)
    if kind == "tensor":
        t = item.tensor
        return content_key(f"tensor:{t.dtype}:{list(t.shape)}:".encode() + t.data)
    return ""


class ServingCache:
    def __init__(self, root: Path, session: ModelSession, shard_rows: int):
        self.cache = EmbeddingCache(root, identity_for(session))
        self.vectors: dict[str, np.ndarray] = self.cache.lookup()
        self.writer = CacheWriter(self.cache, shard_rows)
        self._lock = threading.Lock()

    def find(self, items) -> tuple[list[str], dict[int, np.ndarray]]:
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
