"""embedder.v1 messages on the client side: building items and requests, reading answers and
the per-item errors a server reports."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from protos.embedder.v1 import embedder_pb2 as pb

ImageInput = bytes | str | Path | np.ndarray


@dataclass(frozen=True)
class EmbedResult:
    embeddings: np.ndarray  # (N, D) float32
    ids: list[str]
    cache_hits: list[bool]
    timing: pb.Timing


def image_item(image: ImageInput, item_id: str = "") -> pb.Item:
    """Encoded bytes, a file path, or an already preprocessed uint8 (H, W, 3) array."""
    if isinstance(image, np.ndarray):
        arr = np.ascontiguousarray(image)
        tensor = pb.Tensor(data=arr.astype(arr.dtype.newbyteorder("<")).tobytes(),
                           shape=list(arr.shape), dtype=arr.dtype.name)  # fmt: skip
        return pb.Item(id=item_id, tensor=tensor)
    if isinstance(image, str | Path):
        return pb.Item(id=item_id or str(image), image=Path(image).read_bytes())
    return pb.Item(id=item_id, image=bytes(image))


def embed_request(model: str, items: Sequence[pb.Item], version: str = "", normalize=False,
                  truncate_dim: int = 0, request_id: str = "") -> pb.EmbedRequest:  # fmt: skip
    options = pb.EmbedOptions(normalize=normalize, truncate_dim=truncate_dim)
    return pb.EmbedRequest(model=model, version=version, items=items, options=options,
                           request_id=request_id)  # fmt: skip


class StreamItemError(Exception):
    """An EmbedStream response that carries an error instead of embeddings."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code, self.message = code, message


def decode(response: pb.EmbedResponse) -> EmbedResult:
    if response.HasField("error"):
        codes = {c.value[0]: c for c in grpc.StatusCode}
        raise StreamItemError(codes.get(response.error.code, grpc.StatusCode.UNKNOWN),
                              response.error.message)  # fmt: skip
    embeddings = np.frombuffer(response.embeddings, dtype="<f4").reshape(tuple(response.shape))
    return EmbedResult(embeddings, list(response.ids), list(response.cache_hits), response.timing)


def item_errors(error: grpc.RpcError) -> list[tuple[int, str]]:
    """(index, reason) of each bad item an INVALID_ARGUMENT names in its google.rpc.BadRequest
    details (field `items[3].image`); empty when the status carries none."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(error)
    if status is None:
        return []
    found = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            for violation in bad.field_violations:
                index = _item_index(violation.field)
                if index is not None:
                    found.append((index, violation.description))
    return found


def _item_index(field: str) -> int | None:
    """3 of "items[3].image"."""
    head, _, rest = field.partition("[")
    number = rest.partition("]")[0]
    return int(number) if head == "items" and number.isdigit() else None
