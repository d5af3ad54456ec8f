"""Clients of the embedder.v1 API: sync and asyncio, one request planner; `embedder-client`."""

from embedder.client.clients import AsyncEmbedderClient, EmbedderClient
from embedder.client.messages import (
    EmbedResult,
    StreamItemError,
    decode,
    embed_request,
    image_item,
    item_errors,
)
from embedder.client.planner import request_chunks, server_chunks

__all__ = [
    "AsyncEmbedderClient",
    "EmbedResult",
    "EmbedderClient",
    "StreamItemError",
    "decode",
    "embed_request",
    "image_item",
    "item_errors",
    "request_chunks",
    "server_chunks",
]
