"""Python clients (sync and asyncio) that send items and return numpy arrays.

with EmbedderClient("127.0.0.1:50051") as client:
    vectors = client.embed_texts("minilm_l6", ["a sentence", "another"])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from protos.embedder.v1 import embedder_pb2 as pb
from protos.embedder.v1 import embedder_pb2_grpc as pb_grpc

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


def _channel_args(max_message_bytes: int) -> list[tuple[str, int]]:
    return [("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes)]  # fmt: skip


def _credentials(token: str | None, root_cert: bytes | None):
    if root_cert is None:
        return None
    creds = grpc.ssl_channel_credentials(root_certificates=root_cert)
    if token:
        creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
    return creds


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
        answer_bytes = answer_dim * 4 + len(item.id) + 8
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


class EmbedderClient:
    def __init__(self, target: str, token: str | None = None, root_cert: bytes | None = None,
                 timeout: float | None = 60.0, max_message_bytes: int = 64 << 20):  # fmt: skip
        creds = _credentials(token, root_cert)
        args = _channel_args(max_message_bytes)
        self.channel = (grpc.secure_channel(target, creds, args) if creds
                        else grpc.insecure_channel(target, args))  # fmt: skip
        self.stub = pb_grpc.EmbedderStub(self.channel)
        # Without TLS the token travels as plain metadata (loopback / trusted networks only).
        self.metadata = [("authorization", f"Bearer {token}")] if token and not creds else None
        self.timeout, self.max_message_bytes = timeout, max_message_bytes
        self._models: dict[tuple[str, str], pb.ModelInfo] = {}  # for the server's limits

    def __enter__(self) -> EmbedderClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def list_models(self) -> list[pb.ModelInfo]:
        return list(self.stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout,
                                          metadata=self.metadata).models)  # fmt: skip

    def embed(self, request: pb.EmbedRequest) -> EmbedResult:
        return decode(self.stub.Embed(request, timeout=self.timeout, metadata=self.metadata))

    def model_info(self, model: str, version: str = "") -> pb.ModelInfo:
        """GetModel, asked once per model and client."""
        if (model, version) not in self._models:
            request = pb.GetModelRequest(model=model, version=version)
            self._models[model, version] = self.stub.GetModel(
                request, timeout=self.timeout, metadata=self.metadata
            )
        return self._models[model, version]

    def _embed_items(
        self, model: str, items: list[pb.Item], batch_size: int, **options
    ) -> np.ndarray:
        if not items:
            return np.zeros((0, 0), np.float32)
        info = self.model_info(model, options.get("version", ""))
        chunks = server_chunks(info, items, batch_size, self.max_message_bytes,
                               options.get("truncate_dim", 0))  # fmt: skip
        parts = [
            self.embed(embed_request(model, [items[i] for i in chunk], **options)).embeddings
            for chunk in chunks
        ]
        return np.concatenate(parts)

    def embed_texts(
        self, model: str, texts: Sequence[str], batch_size: int = 64, **options
    ) -> np.ndarray:
        return self._embed_items(model, [pb.Item(text=t) for t in texts], batch_size, **options)

    def embed_images(
        self, model: str, images: Sequence[ImageInput], batch_size: int = 32, **options
    ) -> np.ndarray:
        return self._embed_items(model, [image_item(im) for im in images], batch_size, **options)


class AsyncEmbedderClient:
    """The asyncio twin of EmbedderClient (grpc.aio)."""

    def __init__(self, target: str, token: str | None = None, root_cert: bytes | None = None,
                 timeout: float | None = 60.0, max_message_bytes: int = 64 << 20):  # fmt: skip
        creds = _credentials(token, root_cert)
        args = _channel_args(max_message_bytes)
        self.channel = (grpc.aio.secure_channel(target, creds, args) if creds
                        else grpc.aio.insecure_channel(target, args))  # fmt: skip
        self.stub = pb_grpc.EmbedderStub(self.channel)
        self.metadata = [("authorization", f"Bearer {token}")] if token and not creds else None
        self.timeout, self.max_message_bytes = timeout, max_message_bytes
        self._models: dict[tuple[str, str], pb.ModelInfo] = {}

    async def __aenter__(self) -> AsyncEmbedderClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def list_models(self) -> list[pb.ModelInfo]:
        response = await self.stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout,
                                              metadata=self.metadata)  # fmt: skip
        return list(response.models)

    async def embed(self, request: pb.EmbedRequest) -> EmbedResult:
        return decode(await self.stub.Embed(request, timeout=self.timeout, metadata=self.metadata))

    async def model_info(self, model: str, version: str = "") -> pb.ModelInfo:
        """GetModel, asked once per model and client."""
        if (model, version) not in self._models:
            request = pb.GetModelRequest(model=model, version=version)
            self._models[model, version] = await self.stub.GetModel(
                request, timeout=self.timeout, metadata=self.metadata
            )
        return self._models[model, version]

    async def _embed_items(
        self, model: str, items: list[pb.Item], batch_size: int, **options
    ) -> np.ndarray:
        if not items:
            return np.zeros((0, 0), np.float32)
        info = await self.model_info(model, options.get("version", ""))
        parts = []
        for chunk in server_chunks(info, items, batch_size, self.max_message_bytes,
                                   options.get("truncate_dim", 0)):  # fmt: skip
            result = await self.embed(embed_request(model, [items[i] for i in chunk], **options))
            parts.append(result.embeddings)
        return np.concatenate(parts)

    async def embed_texts(
        self, model: str, texts: Sequence[str], batch_size: int = 64, **options
    ) -> np.ndarray:
        return await self._embed_items(model, [pb.Item(text=t) for t in texts], batch_size,
                                       **options)  # fmt: skip

    async def embed_images(
        self, model: str, images: Sequence[ImageInput], batch_size: int = 32, **options
    ) -> np.ndarray:
        return await self._embed_items(model, [image_item(im) for im in images], batch_size,
                                       **options)  # fmt: skip
