"""Python clients, sync and asyncio: items in, numpy arrays out, one request planner.

with EmbedderClient("127.0.0.1:50051") as client:
    vectors = client.embed_texts("minilm_l6", ["a sentence", "another"])
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import grpc
import numpy as np

from embedder.client.messages import EmbedResult, ImageInput, decode, image_item
from embedder.client.planner import classify_requests, embed_requests
from protos.embedder.v1 import embedder_pb2 as pb
from protos.embedder.v1 import embedder_pb2_grpc as pb_grpc


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


def _texts(texts: Sequence[str]) -> list[pb.Item]:
    return [pb.Item(text=t) for t in texts]


def _images(images: Sequence[ImageInput]) -> list[pb.Item]:
    return [image_item(im) for im in images]


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


class _Client:
    """What both clients share: the channels' settings, auth, and the server's limits.

    `channels=k` opens k connections and spreads calls over them in turn: a server started
    with `--workers N` balances connections, not calls, so one connection reaches one worker.
    """

    def __init__(self, target: str, token: str | None, root_cert: bytes | None,
                 timeout: float | None, max_message_bytes: int, aio: bool,
                 channels: int = 1):  # fmt: skip
        if channels < 1:
            raise ValueError(f"channels={channels}: give 1 or more connections")
        creds = _credentials(token, root_cert)
        # Channels with the same settings share one connection (gRPC's global subchannel
        # pool); a pool of each channel's own gives each its own.
        args = _channel_args(max_message_bytes) + (
            [("grpc.use_local_subchannel_pool", 1)] if channels > 1 else []
        )
        module = grpc.aio if aio else grpc
        self.channels = [module.secure_channel(target, creds, args) if creds
                         else module.insecure_channel(target, args)
                         for _ in range(channels)]  # fmt: skip
        self._stubs = [pb_grpc.EmbedderStub(c) for c in self.channels]
        self._turn = itertools.cycle(range(channels))
        self.channel, self.stub = self.channels[0], self._stubs[0]
        # Without TLS the token travels as plain metadata (loopback / trusted networks only).
        self.metadata = [("authorization", f"Bearer {token}")] if token and not creds else None
        self.timeout, self.max_message_bytes = timeout, max_message_bytes
        self._models: dict[tuple[str, str], pb.ModelInfo] = {}  # GetModel, once per model

    def _call(self, method: str, request):
        stub = self._stubs[next(self._turn)]
        return getattr(stub, method)(request, timeout=self.timeout, metadata=self.metadata)


class EmbedderClient(_Client):
    def __init__(self, target: str, token: str | None = None, root_cert: bytes | None = None,
                 timeout: float | None = 60.0, max_message_bytes: int = 64 << 20,
                 channels: int = 1):  # fmt: skip
        super().__init__(target, token, root_cert, timeout, max_message_bytes, False, channels)

    def __enter__(self) -> EmbedderClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for channel in self.channels:
            channel.close()

    def list_models(self) -> list[pb.ModelInfo]:
        return list(self._call("ListModels", pb.ListModelsRequest()).models)

    def model_info(self, model: str, version: str = "") -> pb.ModelInfo:
        if (model, version) not in self._models:
            request = pb.GetModelRequest(model=model, version=version)
            self._models[model, version] = self._call("GetModel", request)
        return self._models[model, version]

    def embed(self, request: pb.EmbedRequest) -> EmbedResult:
        return decode(self._call("Embed", request))

    def embed_items(self, model: str, items: list[pb.Item], batch_size: int = 32,
                    **options) -> np.ndarray:  # fmt: skip
        """(N, D) vectors of `items`, in as many requests as the server's limits need."""
        if not items:
            return _stack([])
        info = self.model_info(model, options.get("version", ""))
        requests = embed_requests(info, items, batch_size, self.max_message_bytes, options)
        return _stack([self.embed(r).embeddings for r in requests])

    def embed_texts(self, model: str, texts: Sequence[str], batch_size: int = 64,
                    **options) -> np.ndarray:  # fmt: skip
        return self.embed_items(model, _texts(texts), batch_size, **options)

    def embed_images(self, model: str, images: Sequence[ImageInput], batch_size: int = 32,
                     **options) -> np.ndarray:  # fmt: skip
        return self.embed_items(model, _images(images), batch_size, **options)

    def classify(self, model: str, items: list[pb.Item], heads: Sequence[str] = (),
                 top_k: int = 1, batch_size: int = 32, version: str = ""
                 ) -> list[pb.HeadResult]:  # fmt: skip
        """Each head's top-k for every item (the heads of all requests joined, in order)."""
        info = self.model_info(model, version)
        answers = [self._call("Classify", r) for r in classify_requests(
            info, items, batch_size, self.max_message_bytes, heads, top_k, version)]  # fmt: skip
        return join_heads(answers)


class AsyncEmbedderClient(_Client):
    """The asyncio face of EmbedderClient (grpc.aio), on the same planner."""

    def __init__(self, target: str, token: str | None = None, root_cert: bytes | None = None,
                 timeout: float | None = 60.0, max_message_bytes: int = 64 << 20,
                 channels: int = 1):  # fmt: skip
        super().__init__(target, token, root_cert, timeout, max_message_bytes, True, channels)

    async def __aenter__(self) -> AsyncEmbedderClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()

    async def list_models(self) -> list[pb.ModelInfo]:
        return list((await self._call("ListModels", pb.ListModelsRequest())).models)

    async def model_info(self, model: str, version: str = "") -> pb.ModelInfo:
        if (model, version) not in self._models:
            request = pb.GetModelRequest(model=model, version=version)
            self._models[model, version] = await self._call("GetModel", request)
        return self._models[model, version]

    async def embed(self, request: pb.EmbedRequest) -> EmbedResult:
        return decode(await self._call("Embed", request))

    async def embed_items(self, model: str, items: list[pb.Item], batch_size: int = 32,
                          **options) -> np.ndarray:  # fmt: skip
        if not items:
            return _stack([])
        info = await self.model_info(model, options.get("version", ""))
        requests = embed_requests(info, items, batch_size, self.max_message_bytes, options)
        return _stack([(await self.embed(r)).embeddings for r in requests])

    async def embed_texts(self, model: str, texts: Sequence[str], batch_size: int = 64,
                          **options) -> np.ndarray:  # fmt: skip
        return await self.embed_items(model, _texts(texts), batch_size, **options)

    async def embed_images(self, model: str, images: Sequence[ImageInput], batch_size: int = 32,
                           **options) -> np.ndarray:  # fmt: skip
        return await self.embed_items(model, _images(images), batch_size, **options)

    async def classify(self, model: str, items: list[pb.Item], heads: Sequence[str] = (),
                       top_k: int = 1, batch_size: int = 32, version: str = ""
                       ) -> list[pb.HeadResult]:  # fmt: skip
        info = await self.model_info(model, version)
        answers = [await self._call("Classify", r) for r in classify_requests(
            info, items, batch_size, self.max_message_bytes, heads, top_k, version)]  # fmt: skip
        return join_heads(answers)


def join_heads(answers: list[pb.ClassifyResponse]) -> list[pb.HeadResult]:
    """The per-head results of consecutive ClassifyResponses as one result per head."""
    if not answers:
        return []
    joined = [pb.HeadResult(head=h.head, score_kind=h.score_kind, ood_scored=h.ood_scored,
                            ood_threshold=h.ood_threshold) for h in answers[0].heads]  # fmt: skip
    for answer in answers:
        for out, part in zip(joined, answer.heads, strict=True):
            out.items.extend(part.items)
    return joined
