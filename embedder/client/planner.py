"""How a list of items becomes requests a server takes: one planner for both clients.

Requests hold at most `batch_size` items and stay within the limits the server reports for
the model (GetModel: items per request, queue size, message size), the answers included.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from embedder.client.messages import embed_request
from protos.embedder.v1 import embedder_pb2 as pb

REQUEST_OVERHEAD = 64 << 10  # bytes a request's model name, options and framing may take


def request_chunks(items: Sequence[pb.Item], max_items: int, max_bytes: int, answer_dim: int = 0
                   ) -> Iterable[list[int]]:  # fmt: skip
    """Indices of `items` in consecutive requests of at most `max_items` items whose request,
    and answer of `answer_dim` floats per item, fit a `max_bytes` message; an item too big to
    fit any request goes alone (the server refuses it)."""
    budget = max_bytes - min(REQUEST_OVERHEAD, max_bytes // 8)
    chunk: list[int] = []
    size = answer = 0
    for i, item in enumerate(items):
        item_bytes = item.ByteSize() + 8  # the field's tag and length
        answer_bytes = answer_dim * 4 + len(item.id.encode()) + 8
        if chunk and (
            len(chunk) == max_items or size + item_bytes > budget or answer + answer_bytes > budget
        ):
            yield chunk
            chunk, size, answer = [], 0, 0
        chunk.append(i)
        size += item_bytes
        answer += answer_bytes
    if chunk:
        yield chunk


def server_chunks(info: pb.ModelInfo, items: Sequence[pb.Item], batch_size: int,
                  max_bytes: int, truncate_dim: int = 0) -> Iterable[list[int]]:  # fmt: skip
    """`request_chunks` within this client's limits and those the server reports for the model
    (items per request, queue size, message size), the answers included."""
    b = info.batching
    max_bytes = min(max_bytes, b.max_message_bytes or max_bytes)
    max_items = min(batch_size, b.max_items_per_request or batch_size,
                    b.max_queue_size or batch_size)  # fmt: skip
    return request_chunks(items, max_items, max_bytes, truncate_dim or info.dim)


def embed_requests(info: pb.ModelInfo, items: Sequence[pb.Item], batch_size: int,
                   max_bytes: int, options: dict) -> Iterator[pb.EmbedRequest]:  # fmt: skip
    """The EmbedRequests that carry `items` (options: version, normalize, truncate_dim)."""
    for chunk in server_chunks(info, items, batch_size, max_bytes,
                               options.get("truncate_dim", 0)):  # fmt: skip
        yield embed_request(info.name, [items[i] for i in chunk], **options)


def classify_requests(info: pb.ModelInfo, items: Sequence[pb.Item], batch_size: int,
                      max_bytes: int, heads: Sequence[str], top_k: int, version: str = ""
                      ) -> Iterator[pb.ClassifyRequest]:  # fmt: skip
    """The ClassifyRequests that carry `items` (their answers are small: sized as embeddings)."""
    for chunk in server_chunks(info, items, batch_size, max_bytes):
        yield pb.ClassifyRequest(model=info.name, version=version, heads=list(heads),
                                 top_k=top_k, items=[items[i] for i in chunk])  # fmt: skip
