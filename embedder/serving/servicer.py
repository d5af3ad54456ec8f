"""The embedder.v1.Embedder servicer: requests in, preprocessing off the event loop, batcher."""

from __future__ import annotations

import asyncio
import json
import re
import time
from asyncio import FIRST_COMPLETED
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from embedder.core.batch_parts import CPU_IMAGE_BATCH, in_chunks
from embedder.core.config import ServerConfig
from embedder.core.errors import (
    InputError,
    MessageTooLargeError,
    ModelNotFoundError,
    NotReadyError,
    echo,
)
from embedder.core.inputs import Preprocessor, RawItem, tensor_from_bytes
from embedder.core.repository import ModelRepository
from embedder.core.runtime import ModelSession
from embedder.engine.batcher import BatchStats, DynamicBatcher
from embedder.engine.cache_lookup import ServingCache
from embedder.engine.metrics import Metrics
from embedder.serving.status import status_for, stream_rpc, unary_rpc
from protos.embedder.v1 import embedder_pb2 as pb
from protos.embedder.v1 import embedder_pb2_grpc as pb_grpc

_ITEM_NUMBER = re.compile(r"^item (\d+):")
INLINE_TEXT_CHARS = 2048  # tokenising this much takes ~0.1 ms: cheaper than a thread hop
SPLIT_MIN_ITEMS = 4  # smallest part of a batch split across streams (CNNs: fastest per image)


class LoadedModel:
    """A session with its preprocessor and batcher."""

    def __init__(self, session: ModelSession, config: ServerConfig, metrics: Metrics):
        m = session.manifest
        self.session, self.key = session, f"{m.name}/{m.version}"
        self.preprocessor = Preprocessor(m, session.folder, config.max_image_pixels)

        # Each model's metric series, looked up once instead of on every request.
        self.items_total = metrics.items.labels(self.key)
        self.preprocess_ms = metrics.stage_ms.labels(self.key, "preprocess")
        self.queue_ms = metrics.stage_ms.labels(self.key, "queue")
        batch_size, inference, inference_cpu = (
            metrics.batch_size.labels(self.key),
            metrics.stage_ms.labels(self.key, "inference"),
            metrics.inference_cpu.labels(self.key),
        )

        def on_batch(items: int, inference_ms: float, cpu_seconds: float) -> None:
            batch_size.observe(items)
            inference.observe(inference_ms)
            inference_cpu.inc(cpu_seconds)

        # Single-threaded streams on a CPU: a batch alone is split across the free streams.
        streams = config.batching.inference_streams
        single = config.intra_op_threads == 1 and streams > 1 and not session.on_gpu
        split = SPLIT_MIN_ITEMS if single else 0
        # The batcher groups requests into batches of up to max_batch_size; an image model on
        # a CPU then runs them in chunks of the size it is fastest at.
        run = session.run
        if m.modality == "image" and not session.on_gpu:
            run = in_chunks(session.run, CPU_IMAGE_BATCH)
        self.batcher = DynamicBatcher(
            self.key, run, self.preprocessor.collate, config.batching, on_batch, split
        )
        self.cache: ServingCache | None = None
        if config.cache is not None and not m.heads:  # the cache holds embeddings only
            self.cache = ServingCache(config.cache, session, config.cache_shard_rows)

    def warm_up(self) -> None:
        m = self.session.manifest
        if m.modality == "text":
            arrays = self.preprocessor.texts(["warm up the encoder"])
        else:
            arrays = [np.zeros((*m.preprocess.size, 3), np.uint8)]
        self.session.warm_up(self.preprocessor.collate(arrays * 2))


def raw_item(index: int, item: pb.Item) -> RawItem:
    kind = item.WhichOneof("input")
    if kind is None:
        raise InputError(f"item {index}: no input; set image, text or tensor")
    if kind == "tensor":
        t = item.tensor
        return RawItem("tensor", tensor_from_bytes(t.data, list(t.shape), t.dtype, index))
    return RawItem(kind, getattr(item, kind))


def output_dim(options: pb.EmbedOptions, dim: int) -> int:
    """The dimension the response will have; a truncate_dim over the model's is refused."""
    k = options.truncate_dim
    if k > dim:
        raise InputError(f"truncate_dim {k} is over the model's dimension {dim}")
    return k or dim


def finish(embeddings: np.ndarray, options: pb.EmbedOptions, normalized: bool) -> np.ndarray:
    """Truncate to the first k dimensions, then L2-normalise if asked, or if the model's output
    was unit length before the truncation (it is again after)."""
    k = options.truncate_dim
    if k:
        embeddings = embeddings[:, :k]
    if options.normalize or (k and normalized):
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        embeddings = embeddings / np.maximum(norms, 1e-12)
    return np.ascontiguousarray(embeddings, dtype="<f4")


RESPONSE_OVERHEAD = 1024  # bytes of a response besides its vectors and ids


def check_response_size(request: pb.EmbedRequest, dim: int, limit: int) -> None:
    """Refuse, before any work, a request whose answer would be over the message limit."""
    n = len(request.items)
    ids = sum(len(item.id.encode()) + 8 for item in request.items)  # UTF-8 bytes, not characters
    size = n * dim * 4 + ids + RESPONSE_OVERHEAD
    if size > limit:
        fits = max(1, (limit - RESPONSE_OVERHEAD) // (dim * 4 + 16))
        raise MessageTooLargeError(
            f"the answer to {n} items of dimension {dim} would be {size} bytes, over the "
            f"server's message limit of {limit}; send at most about {fits} items per request"
        )


@dataclass
class Computed:
    outputs: np.ndarray  # (N, dim + sum of head classes)
    cache_hits: list[bool]
    timing: pb.Timing


def head_result(name: str, manifest, outputs: np.ndarray, top_k: int) -> pb.HeadResult:
    """Top-k labels and scores of head `name` from the model's stacked outputs."""
    offset = manifest.dim
    for head_name, spec in manifest.heads.items():
        width = len(spec.classes)
        if head_name == name:
            scores = outputs[:, offset : offset + width]
            k = min(max(1, top_k), width)
            order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            items = [
                pb.TopK(labels=[spec.classes[j] for j in row], scores=scores[i, row].tolist())
                for i, row in enumerate(order)
            ]
            return pb.HeadResult(head=name, score_kind=spec.score_kind, items=items)
        offset += width
    raise ModelNotFoundError(f"model {manifest.name!r} has no head {echo(name)}")


def model_info(model: LoadedModel, config: ServerConfig) -> pb.ModelInfo:
    m, b = model.session.manifest, config.batching
    return pb.ModelInfo(
        name=m.name, version=m.version, modality=m.modality, dim=m.dim, layer=m.layer,
        pooling=m.pooling, normalized=m.normalized, providers=model.session.providers,
        precision=model.session.precision,
        batching=pb.BatchingLimits(
            max_batch_size=b.max_batch_size, max_queue_delay_ms=b.max_queue_delay_ms,
            max_queue_size=b.max_queue_size, max_items_per_request=config.max_items_per_request,
            max_message_bytes=config.max_message_bytes, max_image_pixels=config.max_image_pixels,
            inference_streams=b.inference_streams,
        ),
        preprocess_json=json.dumps(asdict(m.preprocess)), manifest_json=m.to_json(),
        heads=list(m.heads),
    )  # fmt: skip


class EmbedderService(pb_grpc.EmbedderServicer):
    """Registered before the server starts; `attach` gives it the models once they are loaded."""

    def __init__(self, config: ServerConfig, metrics: Metrics):
        self.config, self.metrics = config, metrics
        self.repository: ModelRepository | None = None
        self.models: dict[ModelSession, LoadedModel] = {}
        self.draining = False  # set on shutdown: new work is refused while health says so
        self._pool = ThreadPoolExecutor(config.preprocess_threads, thread_name_prefix="preprocess")
        # Items one stream may have in flight: a batch running per inference stream and the
        # next one filling, within the model's queue.
        b = config.batching
        self.stream_items = min(b.max_queue_size, b.max_batch_size * (b.inference_streams + 1))

    def attach(self, repository: ModelRepository) -> None:
        """Serve the repository's models; one whose preprocessing cannot be set up (e.g. its
        tokenizer does not parse) is refused alone."""
        for session in repository.all():
            try:
                self.models[session] = LoadedModel(session, self.config, self.metrics)
            except Exception as exc:
                repository.refuse(session, exc)
        self.repository = repository

    def start(self) -> None:
        for model in self.models.values():
            model.batcher.start()

    def warm_up(self) -> None:
        for model in self.models.values():
            model.warm_up()

    async def close(self) -> None:
        await asyncio.gather(*(m.batcher.close() for m in self.models.values()))
        for model in self.models.values():
            if model.cache:
                model.cache.flush()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _model(self, name: str, version: str) -> LoadedModel:
        if self.draining:
            raise NotReadyError("the server is shutting down; send new requests to another one")
        if self.repository is None:
            raise NotReadyError("the server is still loading its models; retry shortly")
        return self.models[self.repository.get(name, version)]

    @unary_rpc
    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[model_info(m, self.config) for m in self.models.values()]
        )

    @unary_rpc
    async def GetModel(self, request: pb.GetModelRequest, context) -> pb.ModelInfo:
        return model_info(self._model(request.model, request.version), self.config)

    @unary_rpc
    async def Embed(self, request: pb.EmbedRequest, context) -> pb.EmbedResponse:
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        return await self.embed(request, deadline)

    @stream_rpc
    async def EmbedStream(self, requests, context):
        """Requests are processed concurrently, answered in order; errors go in the response.
        A stream keeps at most `stream_items` items in flight: a fast sender is slowed down
        instead of filling the model's queue alone and being refused."""
        pending: asyncio.Queue[tuple[asyncio.Task, str] | None] = asyncio.Queue(maxsize=64)
        budget = self.stream_items

        async def produce() -> None:
            running: dict[asyncio.Task, int] = {}
            try:
                async for request in requests:
                    n = len(request.items)
                    while running and sum(running.values()) + n > budget:
                        done, _ = await asyncio.wait(running, return_when=FIRST_COMPLETED)
                        for finished in done:
                            del running[finished]
                    task = asyncio.ensure_future(self.embed(request, None))
                    running[task] = n
                    try:
                        await pending.put((task, request.request_id))
                    except asyncio.CancelledError:  # not queued: nobody else would cancel it
                        task.cancel()
                        raise
            finally:
                await pending.put(None)

        producer = asyncio.ensure_future(produce())
        try:
            while (entry := await pending.get()) is not None:
                yield await self._stream_answer(*entry)
            await producer
        finally:
            producer.cancel()
            while not pending.empty():  # the client went away: stop what it will never read
                entry = pending.get_nowait()
                if entry is not None:
                    entry[0].cancel()

    async def _stream_answer(self, task: asyncio.Task, request_id: str) -> pb.EmbedResponse:
        try:
            return await task
        except Exception as exc:
            code = status_for(exc)
            self.metrics.errors.labels("EmbedStream/item", code.name).inc()
            return pb.EmbedResponse(
                request_id=request_id, error=pb.Error(code=code.value[0], message=str(exc))
            )

    async def _compute(self, model: LoadedModel, items, deadline: float | None) -> Computed:
        """Every item's model output (features, then head scores): from cache or the batcher."""
        started = time.monotonic()
        n = len(items)
        if n == 0:
            raise InputError("empty request: send at least one item")
        if n > self.config.max_items_per_request:
            limit = self.config.max_items_per_request
            raise InputError(f"{n} items, over the limit of {limit} per request; split it")
        raw = [raw_item(i, item) for i, item in enumerate(items)]
        for i, item in enumerate(raw):  # a wrong input is refused even when it is cached
            model.preprocessor.check_modality(i, item)
        keys, hits = model.cache.find(items) if model.cache else ([], {})
        rows = [i for i in range(n) if i not in hits]
        model.batcher.reserve(len(rows))  # a full queue refuses now, before any decoding
        try:
            arrays = await self._preprocess(model, [raw[i] for i in rows], rows)
        except BaseException:
            model.batcher.release(len(rows))
            raise
        preprocess_ms = (time.monotonic() - started) * 1000
        stats = BatchStats(0.0, 0.0, 0)
        # With cache hits, computed rows go in between them (the cache serves head-less models,
        # so a row is the features alone); without, the batch output is the answer as it is.
        out = np.zeros((n, model.session.manifest.dim), np.float32) if hits else None
        if arrays:
            computed, stats = await model.batcher.submit(arrays, deadline, reserved=True)
            if model.cache:
                await model.cache.store([keys[i] for i in rows], computed)
            if out is None:
                out = computed.astype(np.float32, copy=False)
            else:
                out[rows] = computed
        for i, vector in hits.items():
            out[i] = vector
        model.items_total.inc(n)
        model.preprocess_ms.observe(preprocess_ms)
        model.queue_ms.observe(stats.queue_ms)
        timing = pb.Timing(
            queue_ms=stats.queue_ms, preprocess_ms=preprocess_ms,
            inference_ms=stats.inference_ms, batch_items=stats.batch_items,
            total_ms=(time.monotonic() - started) * 1000,
        )  # fmt: skip
        return Computed(out, [i in hits for i in range(n)], timing)

    async def embed(self, request: pb.EmbedRequest, deadline: float | None) -> pb.EmbedResponse:
        model = self._model(request.model, request.version)
        m = model.session.manifest
        dim = output_dim(request.options, m.dim)
        check_response_size(request, dim, self.config.max_message_bytes)
        result = await self._compute(model, request.items, deadline)
        out = finish(result.outputs[:, : m.dim], request.options, m.normalized)
        return pb.EmbedResponse(
            model=m.name, version=m.version, embeddings=out.tobytes(), shape=list(out.shape),
            ids=[item.id or str(i) for i, item in enumerate(request.items)],
            cache_hits=result.cache_hits, request_id=request.request_id, timing=result.timing,
        )  # fmt: skip

    @unary_rpc
    async def Classify(self, request: pb.ClassifyRequest, context) -> pb.ClassifyResponse:
        model = self._model(request.model, request.version)
        m = model.session.manifest
        wanted = list(request.heads) or list(m.heads)
        unknown = [h for h in wanted if h not in m.heads]
        if not m.heads or unknown:
            have = ", ".join(m.heads) or "none; publish one with embedder-heads publish"
            raise ModelNotFoundError(
                f"model {m.name!r} has no head {echo((unknown or [''])[0])}; heads: {have}"
            )
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        result = await self._compute(model, request.items, deadline)
        return pb.ClassifyResponse(
            model=m.name, version=m.version, request_id=request.request_id, timing=result.timing,
            ids=[item.id or str(i) for i, item in enumerate(request.items)],
            heads=[head_result(h, m, result.outputs, request.top_k) for h in wanted],
        )  # fmt: skip

    async def _preprocess(self, model: LoadedModel, raw: list[RawItem], indices: list[int]
                          ) -> list[np.ndarray]:  # fmt: skip
        """Preprocess `raw`; `indices` are their positions in the request, for error messages."""
        loop = asyncio.get_running_loop()
        pre = model.preprocessor
        if model.session.manifest.modality == "text":
            texts = [r.value for r in raw]
            try:
                if sum(map(len, texts)) <= INLINE_TEXT_CHARS:  # a thread hop costs more
                    return pre.texts(texts)
                return await loop.run_in_executor(self._pool, pre.texts, texts)
            except InputError as exc:  # the tokenizer numbers items within `texts`
                raise InputError(
                    _ITEM_NUMBER.sub(lambda m: f"item {indices[int(m[1])]}:", str(exc))
                ) from exc
        pairs = list(zip(indices, raw, strict=True))
        if all(r.kind == "tensor" for r in raw):  # already pixels: only a shape check, inline
            return [pre.image(i, r) for i, r in pairs]
        jobs: list[Any] = [loop.run_in_executor(self._pool, pre.image, i, r) for i, r in pairs]
        try:
            return list(await asyncio.gather(*jobs))
        except BaseException:  # one bad item: the request's decodes still queued are dropped
            for job in jobs:
                job.cancel()
            raise
