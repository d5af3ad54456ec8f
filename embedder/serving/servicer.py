"""The embedder.v1.Embedder servicer: messages to engine calls and back, nothing else.

The answer-size check is this door's own (gRPC's message limit); batching, caching, limits
and per-item errors are the engine's. `@unary_rpc` / `@stream_rpc` map engine errors to
status codes (status.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from asyncio import FIRST_COMPLETED
from dataclasses import asdict

from embedder.core.errors import InputError, MessageTooLargeError
from embedder.core.inputs import check_item_count, tensor_from_bytes
from embedder.engine.engine import EmbedOptions, Engine, HeadScores, Timing, output_dim
from embedder.engine.model import LoadedModel
from embedder.serving.config import ServerConfig
from embedder.serving.status import status_for, stream_rpc, unary_rpc
from protos.embedder.v1 import embedder_pb2 as pb
from protos.embedder.v1 import embedder_pb2_grpc as pb_grpc

RESPONSE_OVERHEAD = 1024  # bytes of a response besides its vectors and ids


def engine_items(items) -> list:
    """pb.Items as engine items: image bytes, text, or a pixel array."""
    out = []
    for index, item in enumerate(items):
        kind = item.WhichOneof("input")
        if kind == "tensor":
            t = item.tensor
            out.append(tensor_from_bytes(t.data, list(t.shape), t.dtype, index))
        elif kind is None:
            raise InputError("no input; set image, text or tensor", index)
        else:
            out.append(getattr(item, kind))
    return out


def options_of(options: pb.EmbedOptions) -> EmbedOptions:
    return EmbedOptions(normalize=options.normalize, truncate_dim=options.truncate_dim)


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


def timing_message(t: Timing) -> pb.Timing:
    return pb.Timing(queue_ms=t.queue_ms, preprocess_ms=t.preprocess_ms,
                     inference_ms=t.inference_ms, batch_items=t.batch_items,
                     total_ms=t.total_ms)  # fmt: skip


def head_result(h: HeadScores) -> pb.HeadResult:
    """A head's top-k per item, with its OOD verdicts where it has a scorer."""
    if h.ood_scores is None:
        items = [pb.TopK(labels=labels, scores=scores)
                 for labels, scores in zip(h.labels, h.scores, strict=True)]  # fmt: skip
        return pb.HeadResult(head=h.head, score_kind=h.score_kind, items=items)
    items = [pb.TopK(labels=labels, scores=scores, ood_score=ood, unknown=unknown)
             for labels, scores, ood, unknown in zip(h.labels, h.scores, h.ood_scores, h.unknown,
                                                     strict=True)]  # fmt: skip
    return pb.HeadResult(head=h.head, score_kind=h.score_kind, items=items, ood_scored=True,
                         ood_threshold=h.ood_threshold)  # fmt: skip


def ids_of(items) -> list[str]:
    return [item.id or str(i) for i, item in enumerate(items)]


def model_info(model: LoadedModel, config: ServerConfig, engine: Engine) -> pb.ModelInfo:
    m, e = model.manifest, engine.config
    b = e.batching
    return pb.ModelInfo(
        name=m.name, version=m.version, modality=m.modality, dim=m.dim, layer=m.layer,
        pooling=m.pooling, normalized=m.normalized, providers=model.session.providers,
        precision=model.session.precision,
        batching=pb.BatchingLimits(
            max_batch_size=b.max_batch_size, max_queue_delay_ms=b.max_queue_delay_ms,
            max_queue_size=b.max_queue_size, max_items_per_request=e.max_items_per_request,
            max_message_bytes=config.max_message_bytes, max_image_pixels=e.max_image_pixels,
            inference_streams=b.inference_streams,
        ),
        preprocess_json=json.dumps(asdict(m.preprocess)), manifest_json=m.to_json(),
        heads=list(m.heads),
    )  # fmt: skip


class EmbedderServicer(pb_grpc.EmbedderServicer):
    protocol = "embedder.v1"

    def __init__(self, engine: Engine, config: ServerConfig):
        self.engine, self.config, self.metrics = engine, config, engine.metrics

    @unary_rpc
    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        models = self.engine.models.values()
        return pb.ListModelsResponse(models=[model_info(m, self.config, self.engine)
                                             for m in models])  # fmt: skip

    @unary_rpc
    async def GetModel(self, request: pb.GetModelRequest, context) -> pb.ModelInfo:
        model = self.engine.model(request.model, request.version)
        return model_info(model, self.config, self.engine)

    @unary_rpc
    async def Embed(self, request: pb.EmbedRequest, context) -> pb.EmbedResponse:
        return await self.embed(request, _deadline(context))

    async def embed(self, request: pb.EmbedRequest, deadline: float | None) -> pb.EmbedResponse:
        model = self.engine.model(request.model, request.version)
        check_item_count(len(request.items), self.engine.config.max_items_per_request)
        options = options_of(request.options)
        dim = output_dim(options, model.manifest.dim)
        check_response_size(request, dim, self.config.max_message_bytes)
        items = engine_items(request.items)
        result = await self.engine.embed(model, items, options, deadline)
        m, out = model.manifest, result.vectors
        return pb.EmbedResponse(
            model=m.name, version=m.version, embeddings=out.tobytes(), shape=list(out.shape),
            ids=ids_of(request.items), cache_hits=result.cache_hits,
            request_id=request.request_id, timing=timing_message(result.timing),
        )  # fmt: skip

    @unary_rpc
    async def Classify(self, request: pb.ClassifyRequest, context) -> pb.ClassifyResponse:
        model = self.engine.model(request.model, request.version)
        check_item_count(len(request.items), self.engine.config.max_items_per_request)
        items = engine_items(request.items)
        result = await self.engine.classify(model, items, list(request.heads), request.top_k,
                                            _deadline(context))  # fmt: skip
        heads = [head_result(h) for h in result.heads]
        m = model.manifest
        return pb.ClassifyResponse(
            model=m.name, version=m.version, request_id=request.request_id,
            timing=timing_message(result.timing), ids=ids_of(request.items), heads=heads,
        )  # fmt: skip

    @stream_rpc
    async def EmbedStream(self, requests, context):
        """Requests are processed concurrently, answered in order; errors go in the response.
        A stream keeps at most `stream_items` items in flight: a fast sender is slowed down
        instead of filling the model's queue alone and being refused."""
        pending: asyncio.Queue[tuple[asyncio.Task, str] | None] = asyncio.Queue(maxsize=64)
        budget = self.engine.stream_items()

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
            self.metrics.errors.labels(self.protocol, "EmbedStream/item", code.name).inc()
            return pb.EmbedResponse(
                request_id=request_id, error=pb.Error(code=code.value[0], message=str(exc))
            )


def _deadline(context) -> float | None:
    remaining = context.time_remaining()
    return time.monotonic() + remaining if remaining is not None else None
