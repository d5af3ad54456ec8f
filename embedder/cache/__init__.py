"""The content-addressed embedding cache (Parquet), shared by the server and batch export."""

from embedder.cache.store import (
    CacheError,
    CacheIdentity,
    EmbeddingCache,
    Features,
    content_key,
    dataset_folder,
    embedding_column,
    failure_id,
    load_features,
    read_identity,
)
from embedder.cache.writer import CacheWriter

__all__ = [
    "CacheError",
    "CacheIdentity",
    "CacheWriter",
    "EmbeddingCache",
    "Features",
    "content_key",
    "dataset_folder",
    "embedding_column",
    "failure_id",
    "load_features",
    "read_identity",
]
