"""The embedding engine: every door (embedder.v1 gRPC today) reaches the models through it.

Items are plain Python values: encoded image bytes, a text, or uint8 (H, W, 3) pixels already
resized as the manifest says. For each request the engine checks limits and modality, serves
what the cache holds, preprocesses the rest off the event loop, hands it to the model's
dynamic batcher and finishes the vectors. A bad item raises `InputError` with its index and
field. No transport, no protobuf.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedder.core.errors import InputError, ModelNotFoundError, NotReadyError, echo
from embedder.core.inputs import RawItem, check_item_count
from embedder.core.repository import ModelRepository
from embedder.core.runtime import ModelSession, batch_buckets
from embedder.core.vectors import unit_rows
from embedder.engine.batcher import BatchStats
from embedder.engine.config import EngineConfig, thread_defaults
from embedder.engine.metrics import Metrics
from embedder.engine.model import LoadedModel

log = logging.getLogger(__name__)

Item = bytes | str | np.ndarray  # encoded image, text, or uint8 (H, W, 3) pixels
INLINE_TEXT_CHARS = 2048  # tokenising this much takes ~0.1 ms: cheaper than a thread hop


@dataclass(frozen=True)
class EmbedOptions:
    normalize: bool = False  # L2-normalise the vectors
    truncate_dim: int = 0  # keep the first k dimensions (re-normalised for unit-length models)


@dataclass(frozen=True)
class Timing:
    queue_ms: float
    preprocess_ms: float
    inference_ms: float
    batch_items: int  # the largest batch the request's items rode in
    total_ms: float


@dataclass(frozen=True)
class Embedded:
    vectors: np.ndarray  # (N, k) little-endian float32
    cache_hits: list[bool]
    timing: Timing
    tokens: int = 0  # a text model's input tokens, all items (OpenAI's usage.prompt_tokens)


@dataclass(frozen=True)
class HeadScores:
    head: str
    score_kind: str  # probability or decision
    labels: list[list[str]]  # per item, best first
    scores: list[list[float]]
    # Out of distribution, for a head published with a scorer (else None): per item, the
    # score (higher = more unusual) and whether it is over the head's threshold.
    ood_scores: list[float] | None = None
    unknown: list[bool] | None = None
    ood_threshold: float | None = None


@dataclass(frozen=True)
class Classified:
    heads: list[HeadScores]
    timing: Timing


@dataclass(frozen=True)
class Inferred:
    """Every output of the model, as the graph gives them (KServe v2's view)."""

    features: np.ndarray  # (N, dim) float32
    scores: dict[str, np.ndarray]  # head -> (N, classes) float32, for a published model
    timing: Timing
    ood: dict[str, np.ndarray] = field(default_factory=dict)  # head -> (N,), where scored


def raw_item(index: int, item: Any) -> RawItem:
    """A plain item as the preprocessor takes it; anything else is this item's InputError."""
    if isinstance(item, bytes | bytearray | memoryview):
        return RawItem("image", bytes(item))
    if isinstance(item, str):
        try:
            item.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate (JSON's "\\ud800")
            raise InputError(f"not valid Unicode: {exc.reason}", index, "text") from exc
        return RawItem("text", item)
    if isinstance(item, np.ndarray):
        return RawItem("tensor", item)
    raise InputError("no input; set image, text or tensor", index)


def output_dim(options: EmbedOptions, dim: int) -> int:
    """The dimension the answer will have; a truncate_dim over the model's is refused."""
    k = options.truncate_dim
    if k > dim:
        raise InputError(f"truncate_dim {k} is over the model's dimension {dim}")
    return k or dim


def finish(embeddings: np.ndarray, options: EmbedOptions, normalized: bool) -> np.ndarray:
    """Truncate to the first k dimensions, then L2-normalise if asked, or if the model's output
    was unit length before the truncation (it is again after)."""
    k = options.truncate_dim
    if k:
        embeddings = embeddings[:, :k]
    if options.normalize or (k and normalized):
        embeddings = unit_rows(embeddings)
    return np.ascontiguousarray(embeddings, dtype="<f4")


def split_heads(model: LoadedModel, outputs: np.ndarray
                ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:  # fmt: skip
    """Each head's (N, classes) scores, and the (N,) OOD score of each head that has one, from
    the model's stacked outputs (features first; ModelSession.output_names' order)."""
    offset, heads, ood = model.manifest.dim, {}, {}
    for name, spec in model.manifest.heads.items():
        heads[name] = outputs[:, offset : offset + len(spec.classes)]
        offset += len(spec.classes)
        if spec.ood_output:
            ood[name] = outputs[:, offset]
            offset += 1
    return heads, ood


def head_scores(model: LoadedModel, name: str, scores: np.ndarray, top_k: int,
                ood: np.ndarray | None) -> HeadScores:  # fmt: skip
    """Top-k labels and scores of head `name`, with its OOD verdicts where it has a scorer."""
    spec = model.manifest.heads[name]
    k = min(max(1, top_k), len(spec.classes))
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    labels = [[spec.classes[j] for j in row] for row in order]
    values = [scores[i, row].tolist() for i, row in enumerate(order)]
    if ood is None:
        return HeadScores(name, spec.score_kind, labels, values)
    unknown = (ood > spec.ood_threshold).tolist()
    return HeadScores(name, spec.score_kind, labels, values, ood.tolist(), unknown,
                      spec.ood_threshold)  # fmt: skip


class Engine:
    """`load()` (blocking: sessions open and warm up), `start()` on the event loop, then
    `embed` / `classify`; `refuse_new_work()` and `close()` on the way out."""

    def __init__(self, config: EngineConfig, metrics: Metrics | None = None):
        self.config = config = thread_defaults(config)
        self.metrics = metrics or Metrics()
        self.repository: ModelRepository | None = None
        self.models: dict[ModelSession, LoadedModel] = {}
        self._resolved: dict[tuple[str, str], LoadedModel] = {}  # (name, version) asked
        self.accepting = True
        self.started = False  # batchers running: warm-up done
        self._pool = ThreadPoolExecutor(config.preprocess_threads, thread_name_prefix="preprocess")

    def load(self) -> ModelRepository:
        """Open every model of the repository; one whose files or preprocessing are broken is
        refused alone (logged, in `repository.refused`)."""
        c = self.config
        buckets = batch_buckets(c.batching.max_batch_size)
        repository = ModelRepository.load(c.repository, c.session, buckets, c.models)
        models = {}  # filled aside: requests may list self.models meanwhile
        for session in repository.all():
            try:
                models[session] = LoadedModel(session, c, self.metrics)
            except Exception as exc:
                repository.refuse(session, exc)
        self.models, self.repository = models, repository
        return repository

    def warm_up(self) -> None:
        for model in self.models.values():
            model.warm_up()

    def start(self) -> None:
        for model in self.models.values():
            model.batcher.start()
        self.started = True

    def refuse_new_work(self) -> None:
        self.accepting = False

    async def close(self) -> None:
        await asyncio.gather(*(m.batcher.close() for m in self.models.values()))
        for model in self.models.values():
            if model.cache:
                model.cache.flush()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def ready(self) -> bool:
        """Models loaded, warmed up and new work taken (KServe readiness, as gRPC health)."""
        return self.started and self.accepting

    def versions(self, name: str) -> list[str]:
        """The loaded versions of model `name`."""
        return sorted(m.manifest.version for m in self.models.values() if m.manifest.name == name)

    def model(self, name: str, version: str = "") -> LoadedModel:
        if not self.accepting:
            raise NotReadyError("the server is shutting down; send new requests to another one")
        if not self.started:
            raise NotReadyError("the server is still loading its models; retry shortly")
        found = self._resolved.get((name, version))  # the set is fixed once started
        if found is None:
            found = self._resolved[name, version] = self.models[self.repository.get(name, version)]
        return found

    async def embed(self, model: LoadedModel, items: list[Item],
                    options: EmbedOptions = EmbedOptions(),
                    deadline: float | None = None) -> Embedded:  # fmt: skip
        """`deadline`: time.monotonic() after which queued items are dropped, not run."""
        m = model.manifest
        output_dim(options, m.dim)
        outputs, hits, timing, tokens = await self._compute(model, items, deadline)
        return Embedded(finish(outputs[:, : m.dim], options, m.normalized), hits, timing, tokens)

    async def classify(self, model: LoadedModel, items: list[Item], heads: list[str],
                       top_k: int = 1, deadline: float | None = None) -> Classified:  # fmt: skip
        """Top-k of each head in `heads` (every head of the model when empty)."""
        m = model.manifest
        wanted = list(heads) or list(m.heads)
        unknown = [h for h in wanted if h not in m.heads]
        if not m.heads or unknown:
            have = ", ".join(m.heads) or "none; publish one with embedder-heads publish"
            raise ModelNotFoundError(
                f"model {m.name!r} has no head {echo((unknown or [''])[0])}; heads: {have}"
            )
        outputs, _, timing, _ = await self._compute(model, items, deadline)
        scores, ood = split_heads(model, outputs)
        return Classified([head_scores(model, h, scores[h], top_k, ood.get(h)) for h in wanted],
                          timing)  # fmt: skip

    async def infer(self, model: LoadedModel, items: list[Item],
                    deadline: float | None = None) -> Inferred:  # fmt: skip
        outputs, _, timing, _ = await self._compute(model, items, deadline)
        features = np.ascontiguousarray(outputs[:, : model.manifest.dim], np.float32)
        heads, ood = split_heads(model, outputs)
        scores = {h: np.ascontiguousarray(v, np.float32) for h, v in heads.items()}
        ood = {h: np.ascontiguousarray(v, np.float32) for h, v in ood.items()}
        return Inferred(features, scores, timing, ood)

    async def _compute(self, model: LoadedModel, items: list[Item], deadline: float | None
                       ) -> tuple[np.ndarray, list[bool], Timing, int]:  # fmt: skip
        """Every item's model output (features, then head scores), from the cache or the
        batcher; with the timing and, for a text model, the number of input tokens."""
        started = time.monotonic()
        n = len(items)
        check_item_count(n, self.config.max_items_per_request)
        raw = [raw_item(i, item) for i, item in enumerate(items)]
        for i, item in enumerate(raw):  # a wrong input is refused even when it is cached
            model.preprocessor.check_modality(i, item)
        keys, hits = model.cache.find(raw) if model.cache else ([], {})
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
        out = np.zeros((n, model.manifest.dim), np.float32) if hits else None
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
        timing = Timing(stats.queue_ms, preprocess_ms, stats.inference_ms, stats.batch_items,
                        (time.monotonic() - started) * 1000)  # fmt: skip
        tokens = 0
        if model.manifest.modality == "text":  # cache hits were not tokenised: count them now
            hit_texts = [raw[i].value for i in hits]
            tokens = sum(map(len, arrays)) + sum(map(len, model.preprocessor.texts(hit_texts)
                                                     if hit_texts else []))  # fmt: skip
        return out, [i in hits for i in range(n)], timing, tokens

    async def _preprocess(self, model: LoadedModel, raw: list[RawItem], indices: list[int]
                          ) -> list[np.ndarray]:  # fmt: skip
        """Preprocess `raw`; `indices` are their positions in the request, for errors."""
        loop = asyncio.get_running_loop()
        pre = model.preprocessor
        if model.manifest.modality == "text":
            texts = [r.value for r in raw]
            try:
                if sum(map(len, texts)) <= INLINE_TEXT_CHARS:  # a thread hop costs more
                    return pre.texts(texts)
                return await loop.run_in_executor(self._pool, pre.texts, texts)
            except InputError as exc:  # the tokenizer numbers items within `texts`
                if exc.index is None:
                    raise
                raise exc.at(indices[exc.index]) from exc
        pairs = list(zip(indices, raw, strict=True))
        if all(r.kind == "tensor" for r in raw):  # already pixels: only a shape check, inline
            return [pre.image(i, r) for i, r in pairs]
        jobs = [self._pool.submit(pre.image, i, r) for i, r in pairs]
        try:
            return list(await asyncio.gather(*map(asyncio.wrap_future, jobs)))
        except BaseException:  # one bad item: the request's decodes still queued are dropped
            for job in jobs:  # now, not when the loop next runs (as asyncio's own cancel does)
                job.cancel()
            raise

    def stream_items(self) -> int:
        """Items one stream of requests may have in flight: a batch running per inference
        stream and the next one filling, within the model's queue."""
        b = self.config.batching
        return min(b.max_queue_size, b.max_batch_size * (b.inference_streams + 1))
