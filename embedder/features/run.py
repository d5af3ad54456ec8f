"""Batch feature export: embed a whole dataset with one model into the embedding cache.

Engines: `local` (an onnxruntime session in this process; one pool of worker threads reads,
decodes or tokenises ahead and runs the inference batches, one onnxruntime thread each),
`server` (a running embedder-serve does the work), `ray` (Ray Data, one session per actor; see
ray_engine.py). All three share the reading, hashing, deduplication, failure handling and cache
writing here, so a kill -9 at any moment and a rerun end with the rows of a clean run; one bad
item (corrupt image, text too long) fails alone.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Container, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from embedder.cache.store import CacheIdentity, EmbeddingCache, content_key, failure_id
from embedder.core.batch_parts import CPU_IMAGE_BATCH
from embedder.core.config import Provider, ServerConfig, check_ranges
from embedder.core.errors import EmbedderError, InputError
from embedder.core.inputs import Preprocessor, RawItem
from embedder.core.manifest import Manifest
from embedder.core.preprocess import DEFAULT_MAX_PIXELS
from embedder.core.repository import version_key
from embedder.core.runtime import CPU, ModelSession, model_file, open_session, provider_chain
from embedder.features.sources import SourceItem
from protos.embedder.v1 import embedder_pb2 as pb

Engine = Literal["local", "server", "ray"]


@dataclass(frozen=True)
class BatchExportConfig:
    repo: Path = Path("models")
    model: str = "mobilenet_v2"
    version: str = ""  # empty: the highest version in the repository
    cache: Path = Path("cache")
    engine: Engine = "local"
    server: str | None = None  # host:port for engine="server"
    batch_size: int = 0  # 0: what suits the model and provider (batch_size_for)
    # One pool of `workers` threads (0: one per core this process may use) reads and decodes
    # chunks of items and runs inference batches, whichever is next: never more busy threads
    # than cores. Batches run side by side with `intra_op_threads` each (0: every core), which
    # measured faster on a CPU than one batch at a time on all cores.
    workers: int = 0
    intra_op_threads: int = 1
    shard_rows: int = 2048  # rows per Parquet shard: the most a kill can cost
    provider: Provider = "auto"
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    ray_address: str | None = None  # None: a local Ray; "auto" or ray://host:port: a cluster
    ray_actors: int = 2  # one CPU and one onnxruntime thread each
    progress: bool = True
    run_name: str = "run"  # the dataset's name in the cache's runs/ folder

    def __post_init__(self) -> None:
        check_ranges(self, at_least_one=("shard_rows", "ray_actors", "max_image_pixels"),
                     not_negative=("batch_size", "workers", "intra_op_threads"))  # fmt: skip


@dataclass
class Summary:
    total: int = 0
    embedded: int = 0
    from_cache: int = 0
    duplicates: int = 0
    failed: int = 0
    seconds: float = 0.0
    dataset: Path | None = None
    keys: list[str] = field(default_factory=list)  # this run's inputs in the cache, in order
    run_file: Path | None = None  # runs/<name>.parquet: this dataset's keys, labels, sources

    def __str__(self) -> str:
        rate = self.embedded / self.seconds if self.seconds else 0.0
        return (f"{self.total} items: {self.embedded} embedded, {self.from_cache} from cache, "
                f"{self.duplicates} duplicates, {self.failed} failed in {self.seconds:.1f} s "
                f"({rate:.1f} items/s) -> {self.dataset}")  # fmt: skip


@dataclass
class Prepared:
    """One item after reading, hashing and preprocessing (or the reason it failed)."""

    item: SourceItem
    key: str = ""
    array: np.ndarray | None = None
    raw: bytes | str | None = None  # what a server engine sends
    error: str | None = None


def open_model(config: BatchExportConfig) -> ModelSession:
    server_config = ServerConfig(
        repository=config.repo, provider=config.provider, intra_op_threads=config.intra_op_threads
    )
    folder = _model_folder(config)
    manifest = Manifest.read(folder)
    # On a GPU every batch, the last one too, runs at the one batch size: one cuDNN plan.
    buckets = (batch_size_for(config, manifest),)
    return open_session(folder, manifest, server_config, buckets)


def worker_count(config: BatchExportConfig) -> int:
    if config.workers:
        return config.workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1


def _on_gpu(provider: Provider) -> bool:
    import onnxruntime as ort

    return provider_chain(provider, ort.get_available_providers())[0] != CPU


def planned_identity(manifest: Manifest, provider: Provider) -> CacheIdentity:
    """The identity of the file a session will run, known without loading it."""
    filename, precision = model_file(manifest, _on_gpu(provider), "fp32")
    return CacheIdentity.of(manifest, manifest.file_sha256(precision))


def batch_size_for(config: BatchExportConfig, manifest: Manifest) -> int:
    """The configured batch size, or by default the one that runs fastest per item as measured
    (README, batch export benchmark): on a CPU, image models in batches of 4 (activations stay
    in cache; batches of 32 were 25-45% slower per image), text encoders in batches of 32; on a
    GPU, large batches."""
    if config.batch_size:
        return config.batch_size
    if config.engine == "server":
        return 32  # items per request: the server forms its own batches
    if _on_gpu(config.provider):
        return 64
    return CPU_IMAGE_BATCH if manifest.modality == "image" else 32


class LazySession:
    """Opens the model on the first miss: a fully cached rerun never loads it. On a GPU the
    session is opened first (`identity()`): a GPU provider that does not start falls back to
    fp32 on the CPU, and the cache must be the one of the file that really runs."""

    def __init__(self, config: BatchExportConfig):
        self.config = config
        self._session: ModelSession | None = None
        self._failure: Exception | None = None
        self._lock = threading.Lock()
        self._identity: CacheIdentity | None = None

    def identity(self, manifest: Manifest) -> CacheIdentity:
        if self._identity is None:
            if _on_gpu(self.config.provider):
                self._identity = identity_for(self.get())
            else:
                self._identity = planned_identity(manifest, self.config.provider)
        return self._identity

    def get(self) -> ModelSession:
        with self._lock:
            return self._open()

    def _open(self) -> ModelSession:
        if self._failure is not None:  # the batches queued behind a failed load fail at once
            raise self._failure
        if self._session is None:
            try:
                session = open_model(self.config)
                if self._identity is not None and identity_for(session) != self._identity:
                    raise EmbedderError(
                        f"{self.config.model}: the session runs {session.precision} on "
                        f"{session.providers}, not the file this cache was opened for"
                    )
            except Exception as exc:
                self._failure = exc
                raise
            self._session = session
        return self._session


def _model_folder(config: BatchExportConfig) -> Path:
    base = Path(config.repo) / config.model
    found = base.iterdir() if base.is_dir() else []
    versions = [p.name for p in found if p.is_dir() and not p.name.startswith(".")]
    if not versions:
        raise EmbedderError(f"no model {config.model!r} in {config.repo}; export it first")
    version = config.version or max(versions, key=version_key)
    if version not in versions:
        raise EmbedderError(f"{config.model} has no version {version!r}; found {sorted(versions)}")
    return base / version


def identity_for(session: ModelSession) -> CacheIdentity:
    m = session.manifest
    return CacheIdentity.of(m, m.file_sha256(session.precision))


def read_item(item: SourceItem) -> Prepared:
    """Read bytes and hash them; text is validated here."""
    if item.error is not None:  # a row of the source that held no usable text
        return Prepared(item, "", error=item.error)
    if item.text is not None:
        try:
            raw = item.text.encode("utf-8")
        except UnicodeEncodeError:
            return _not_unicode(item)
        if not item.text.strip():
            return Prepared(item, content_key(raw), error="empty text")
        return Prepared(item, content_key(raw), raw=item.text)
    try:
        data = item.path.read_bytes()
    except OSError as exc:
        return Prepared(item, "", error=f"cannot read file: {exc.strerror or exc}")
    return Prepared(item, content_key(data), raw=data)


def _not_unicode(item: SourceItem) -> Prepared:
    """A text that cannot be UTF-8: bytes that were not UTF-8 (kept as surrogate escapes, so
    its key is the hash of those bytes), or a lone surrogate such as JSON's "\\ud800"."""
    try:
        return Prepared(item, content_key(item.text.encode("utf-8", "surrogateescape")),
                        error="not valid UTF-8")  # fmt: skip
    except UnicodeEncodeError:
        key = content_key(item.text.encode("utf-8", "surrogatepass"))
        return Prepared(item, key, error="holds a lone surrogate (such as \\ud800): not Unicode")


class CacheWriter:
    """Buffers rows and writes a shard every `shard_rows`; failures go to their own table."""

    def __init__(self, cache: EmbeddingCache, shard_rows: int):
        self.cache, self.shard_rows = cache, shard_rows
        self.rows: list[tuple[str, np.ndarray, str | None, str | None]] = []
        self.failures: list[tuple[str, str, str]] = []
        self._buffered: set[str] = set()

    def add(self, key: str, vector: np.ndarray, label: str | None, source: str | None) -> None:
        if key in self.cache.keys or key in self._buffered:  # two requests raced on one input
            return
        self._buffered.add(key)
        self.rows.append((key, vector, label, source))
        if len(self.rows) >= self.shard_rows:
            self.flush()

    def fail(self, key: str, source: str, reason: str) -> None:
        if failure_id(key, source) in self.cache.failed:  # failed before: retried, recorded once
            return
        self.failures.append((key, source, reason))

    def flush(self) -> None:
        if self.rows:
            keys, vectors, labels, sources = zip(*self.rows, strict=True)
            self.cache.append(list(keys), np.stack(vectors), list(labels), list(sources))
            self.rows, self._buffered = [], set()
        if self.failures:
            self.cache.append_failures(self.failures)
            self.failures = []


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="item", disable=not enabled, smoothing=0.1, dynamic_ncols=True)


def prepare_stream(items: list[SourceItem], prepare: Callable[[SourceItem], Prepared],
                   pool: ThreadPoolExecutor, ahead: int, chunk: int = 8,
                   ) -> Iterator[Prepared]:  # fmt: skip
    """`prepare` on `pool`, results in input order, at most about `ahead` items in flight.
    Items go to the pool `chunk` at a time: a hand-off per item would cost about as much as
    reading and hashing a cached one."""
    window: deque[Future] = deque()
    for start in range(0, len(items), chunk):
        window.append(pool.submit(lambda part: [prepare(i) for i in part],
                                  items[start : start + chunk]))  # fmt: skip
        if len(window) * chunk >= ahead:
            yield from window.popleft().result()
    for future in window:
        yield from future.result()


def export_features(items: Iterable[SourceItem], config: BatchExportConfig) -> Summary:
    """Embed every item not already cached; returns what happened."""
    if config.engine == "ray":
        from embedder.features.ray import export_with_ray

        return export_with_ray(list(items), config)
    started = time.perf_counter()
    items = list(items)
    folder = _model_folder(config) if config.engine == "local" else None
    lazy = LazySession(config)
    if folder is not None:
        manifest = Manifest.read(folder)
        identity = lazy.identity(manifest)
    else:
        manifest, identity, limits = _server_model(config)
    cache = EmbeddingCache(config.cache, identity)
    summary = Summary(total=len(items), dataset=cache.folder)
    writer = CacheWriter(cache, config.shard_rows)
    pre = Preprocessor(manifest, folder, config.max_image_pixels) if folder else None
    prepare = make_preparer(manifest, pre, set(cache.keys))
    seen: set[str] = set()
    members: dict[str, tuple[str | None, str]] = {}  # this run's rows: key -> (label, source)
    batch: list[Prepared] = []
    with ExitStack() as stack, _progress(len(items), config.progress) as bar:
        stack.callback(writer.flush)  # whatever was embedded survives an aborted run
        if pre is not None:
            embed = _local_embedder(lazy, pre)
        else:
            embed = _server_embedder(config, manifest, limits, stack)
        batch_size, workers = batch_size_for(config, manifest), worker_count(config)
        # Decoding and inference share the workers, so they never fight over a core; this
        # loop only deduplicates and records results, in input order.
        pool = ThreadPoolExecutor(workers, thread_name_prefix="export")
        stack.callback(pool.shutdown, cancel_futures=True)  # a failed run leaves nothing queued
        stream = prepare_stream(items, prepare, pool, max(64, batch_size * 4))
        in_flight: list[tuple[list[Prepared], Future]] = []
        # On a GPU the batches are large and the device runs them one after another anyway.
        slots = 2 if pre is not None and _on_gpu(config.provider) else workers

        def submit(batch: list[Prepared]) -> None:
            in_flight.append((batch, pool.submit(embed, batch)))
            while len(in_flight) > slots or (in_flight and in_flight[0][1].done()):
                done_batch, future = in_flight.pop(0)
                _record_batch(done_batch, future.result(), writer, summary, members)

        for prepared in stream:
            bar.update(1)
            if prepared.key and prepared.key in seen:
                summary.duplicates += 1
                continue
            seen.add(prepared.key)
            if prepared.error is not None:
                summary.failed += 1
                writer.fail(prepared.key, prepared.item.source, prepared.error)
                continue
            members[prepared.key] = (prepared.item.label, prepared.item.source)
            if prepared.key in cache.keys:
                summary.from_cache += 1
                continue
            batch.append(prepared)
            if len(batch) >= batch_size:
                submit(batch)
                batch = []
        if batch:
            submit(batch)
        for done_batch, future in in_flight:
            _record_batch(done_batch, future.result(), writer, summary, members)
    summary.keys = list(members)
    summary.run_file = cache.write_run(config.run_name, members)
    summary.seconds = time.perf_counter() - started
    return summary


def _record_batch(batch: list[Prepared], result, writer: CacheWriter, summary: Summary,
                  members: dict) -> None:  # fmt: skip
    vectors, failures = result
    failed = dict(failures)
    done = [p for i, p in enumerate(batch) if i not in failed]
    for i, reason in failures:
        writer.fail(batch[i].key, batch[i].item.source, reason)
        members.pop(batch[i].key, None)
    for prepared, vector in zip(done, vectors, strict=True):
        writer.add(prepared.key, vector, prepared.item.label, prepared.item.source)
    summary.embedded += len(done)
    summary.failed += len(failures)


def make_preparer(manifest: Manifest, pre: Preprocessor | None, known: Container[str]):
    """Read, hash, skip keys `known` from earlier runs, then decode an image or tokenise a text
    with `pre` (local and Ray engines; None when a server preprocesses)."""

    def prepare(item: SourceItem) -> Prepared:
        prepared = read_item(item)
        if prepared.error or prepared.key in known:
            return prepared
        if manifest.modality == "image" and item.path is None:
            prepared.error = "text given to an image model"
        elif manifest.modality == "text" and item.text is None:
            prepared.error = "file given to a text model; pass a table of texts"
        elif pre is not None:  # one bad item (e.g. a text too long to embed) fails alone
            try:
                if manifest.modality == "image":
                    prepared.array = pre.image(0, RawItem("image", prepared.raw))
                else:
                    (prepared.array,) = pre.texts([item.text])
                prepared.raw = None
            except InputError as exc:
                prepared.error = str(exc).removeprefix("item 0: ")
        return prepared

    return prepare


def _local_embedder(lazy: LazySession, pre: Preprocessor):
    def embed(batch: list[Prepared]) -> tuple[np.ndarray, list[tuple[int, str]]]:
        arrays = [p.array for p in batch]
        return lazy.get().features(pre.collate(arrays)), []

    return embed


_ITEM = re.compile(r"^item (\d+): ")


def _server_embedder(config: BatchExportConfig, manifest: Manifest, limits, stack: ExitStack):
    """Sends raw bytes / texts in requests within the server's `limits` (items and bytes); an
    item the server rejects (or one too big for any request) is recorded and the rest resent."""
    import grpc

    from embedder.client.clients import EmbedderClient, embed_request, request_chunks

    max_bytes, max_items = limits.max_message_bytes, limits.max_items_per_request
    client = stack.enter_context(EmbedderClient(config.server, max_message_bytes=max_bytes))
    kind = "text" if manifest.modality == "text" else "image"

    def send(items: list[pb.Item], indices: list[int], failures: list) -> np.ndarray:
        alive = list(indices)
        while alive:
            request = embed_request(config.model, [items[i] for i in alive],
                                    version=config.version)  # fmt: skip
            if request.ByteSize() > max_bytes:  # one item alone over the limit
                failures.append((alive[0], f"{items[alive[0]].ByteSize()} bytes, over the "
                                           f"server's message limit of {max_bytes}"))  # fmt: skip
                return np.zeros((0, manifest.dim), np.float32)
            try:
                return client.embed(request).embeddings
            except grpc.RpcError as exc:
                match = _ITEM.match(exc.details() or "")
                if exc.code() != grpc.StatusCode.INVALID_ARGUMENT or not match:
                    what = f"{exc.code().name}: {exc.details()}"
                    raise EmbedderError(f"server {config.server}: {what}") from exc
                bad = alive.pop(int(match.group(1)))
                failures.append((bad, exc.details()[match.end() :]))
        return np.zeros((0, manifest.dim), np.float32)

    def embed(batch: list[Prepared]) -> tuple[np.ndarray, list[tuple[int, str]]]:
        items = [pb.Item(**{kind: p.raw}) for p in batch]
        failures: list[tuple[int, str]] = []
        chunks = request_chunks(items, max_items, max_bytes, manifest.dim)
        parts = [send(items, chunk, failures) for chunk in chunks]
        return np.concatenate(parts), failures

    return embed


def _server_model(config: BatchExportConfig) -> tuple[Manifest, CacheIdentity, pb.BatchingLimits]:
    """The served model's manifest, the cache identity of the file the server runs, and the
    limits of the server's requests."""
    import json

    from embedder.client.clients import EmbedderClient

    if not config.server:
        raise EmbedderError("engine 'server' needs --server host:port")
    with EmbedderClient(config.server) as client:
        info = client.stub.GetModel(pb.GetModelRequest(model=config.model, version=config.version))
    manifest = Manifest.from_dict(json.loads(info.manifest_json))
    identity = CacheIdentity.of(manifest, manifest.file_sha256(info.precision))
    return manifest, identity, info.batching
