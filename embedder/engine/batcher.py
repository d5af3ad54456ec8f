"""Dynamic batching per model: items from concurrent requests ride together in one run.

A batch goes as soon as it is full or its oldest item has waited `max_queue_delay_ms`, on the
first of `inference_streams` workers that is free; while batches run, the next ones fill. With
single-threaded streams, a batch is split across the streams that are free, so a batch that
comes alone still uses every core; a lone request too small to split runs on a second session
with all their threads. A full queue refuses at once (RESOURCE_EXHAUSTED) instead
of letting latency grow without bound; a request whose deadline has passed is dropped before
compute.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np

from embedder.core.errors import DeadlineExceededError, InputError, NotReadyError, QueueFullError
from embedder.engine.config import BatchingConfig


@dataclass
class BatchStats:
    queue_ms: float
    inference_ms: float
    batch_items: int


@dataclass
class _Job:
    arrays: list[np.ndarray]
    future: asyncio.Future
    deadline: float | None  # time.monotonic()
    enqueued: float = field(default_factory=time.monotonic)
    tokens: int = 0  # its longest item's length (text models with a token budget)


LENGTH_GROUP = 2.0  # a text batch takes queued requests within this factor of its oldest's length


class DynamicBatcher:
    def __init__(
        self,
        name: str,
        run: Callable[[dict[str, np.ndarray]], np.ndarray],
        collate: Callable[[list[np.ndarray]], dict[str, np.ndarray]],
        config: BatchingConfig,
        on_batch: Callable[[int, float, float], None] | None = None,
        split_min_items: int = 0,
        run_wide: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None,
        token_budget: int = 0,
    ):
        config = replace(config, inference_streams=config.inference_streams or 1)
        self.name, self._run, self._collate, self.config = name, run, collate, config
        # A lone request too small to split (alone in its batch, nothing queued, every stream
        # free) runs here instead, with all the streams' cores (None: always on a stream).
        # Batches from concurrent clients stay on single streams: two side by side did more
        # than one on two threads (8 single-image clients: -17 % when they went wide).
        self._run_wide = run_wide
        # Text models: items are token arrays; a batch holds at most this many padded tokens
        # (items x its longest) and requests of similar length (0: batches by items only).
        self._token_budget = token_budget
        self._on_batch = on_batch
        # With single-threaded streams, a batch is split across the streams that are free
        # (parts of at least this many items; 0: never), so a lone batch still uses every core.
        self._split_min_items = split_min_items
        self._free_streams = config.inference_streams
        self._jobs: deque[_Job] = deque()
        self._queued_items = 0  # in _jobs
        self._reserved_items = 0  # admitted and not yet in a batch: preprocessing or queued
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(
            config.inference_streams, thread_name_prefix=f"infer-{name}"
        )
        self._workers: list[asyncio.Task] = []
        self._closing = False
        # Recent batch size (a slowly decaying maximum) and when the last batch ended.
        self._expected, self._last_done = 0.0, 0.0

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._workers = [
            loop.create_task(self._work(), name=f"batcher-{self.name}-{i}")
            for i in range(self.config.inference_streams)
        ]

    async def close(self) -> None:
        """Stop the workers; whoever still waits (queued or mid-run) gets NotReadyError."""
        self._closing = True
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        _fail(self._jobs, NotReadyError(f"model {self.name!r} is shutting down; retry elsewhere"))
        self._jobs.clear()
        self._reserved_items -= self._queued_items
        self._queued_items = 0
        # The batch still running in a thread finishes there, without blocking the event loop.
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    def reserve(self, items: int) -> None:
        """Count `items` against the queue from the moment their request arrives, before they
        are preprocessed, so that a full queue refuses at once and decoding cannot pile up
        behind it. They are used by `submit(..., reserved=True)` or handed back by `release`."""
        limit = self.config.max_queue_size
        if self._closing:
            raise NotReadyError(f"model {self.name!r} is shutting down; retry elsewhere")
        if items > limit:
            raise InputError(
                f"{items} items can never fit model {self.name!r}'s queue of {limit}; "
                "split the request"
            )
        if self._reserved_items + items > limit:
            raise QueueFullError(
                f"model {self.name!r} has {self._reserved_items} items waiting (limit "
                f"{limit}); retry with backoff"
            )
        self._reserved_items += items

    def release(self, items: int) -> None:
        """Hand back reserved items that will not be submitted (their request failed)."""
        self._reserved_items -= items

    async def submit(
        self, arrays: list[np.ndarray], deadline: float | None = None, reserved: bool = False
    ) -> tuple[np.ndarray, BatchStats]:
        """Embed `arrays` (one per item); split into chunks of at most max_batch_size.
        `reserved`: their room in the queue was taken with `reserve` when the request came."""
        size = self.config.max_batch_size
        if not reserved:
            self.reserve(len(arrays))
        elif self._closing:
            self.release(len(arrays))
            raise NotReadyError(f"model {self.name!r} is shutting down; retry elsewhere")
        loop = asyncio.get_running_loop()
        jobs = [
            _Job(arrays[i : i + size], loop.create_future(), deadline)
            for i in range(0, len(arrays), size)
        ]
        if self._token_budget:
            for job in jobs:
                job.tokens = max(len(a) for a in job.arrays)
        for job in jobs:
            self._jobs.append(job)
            self._queued_items += len(job.arrays)
        self._wakeup.set()
        if len(jobs) == 1:  # the common case, without gather's bookkeeping
            return await jobs[0].future
        try:
            results = await asyncio.gather(*(job.future for job in jobs))
        except BaseException:
            for job in jobs:
                job.future.cancel()
            raise
        stats = [s for _, s in results]
        merged = BatchStats(
            queue_ms=max(s.queue_ms for s in stats),
            inference_ms=sum(s.inference_ms for s in stats),
            batch_items=max(s.batch_items for s in stats),
        )
        return np.concatenate([r for r, _ in results]), merged

    async def _next_batch(self) -> list[_Job]:
        limit, delay = self.config.max_batch_size, self.config.max_queue_delay_ms / 1000
        while True:  # several workers take from one queue: re-check after every wait
            while not self._jobs or not self._free_streams:  # (all streams busy with parts)
                self._wakeup.clear()
                await self._wakeup.wait()
            if self._queued_items >= limit or self._budget_filled():
                break
            until = self._jobs[0].enqueued + delay
            # The callers of a batch that just finished are about to send their next requests:
            # wait a little for them rather than run a part now and the rest right after.
            if self._queued_items < min(limit, int(self._expected)):
                until = max(until, self._last_done + self.config.returning_wait_ms / 1000)
            remaining = until - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:  # (not wait_for: on 3.11 it can swallow a cancel that races a wakeup)
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
        batch = self._take_by_tokens() if self._token_budget else self._take_in_order(limit)
        for job in batch:
            self._queued_items -= len(job.arrays)
            self._reserved_items -= len(job.arrays)
        return batch

    def _take_in_order(self, limit: int) -> list[_Job]:
        batch, items = [], 0
        while self._jobs and items + len(self._jobs[0].arrays) <= limit:
            items += len(self._jobs[0].arrays)
            batch.append(self._jobs.popleft())
        return batch

    def _budget_filled(self) -> bool:
        """Whether the queued requests of the oldest's length group fill a batch's tokens."""
        if not self._token_budget:
            return False
        first = self._jobs[0]
        group = [j for j in self._jobs if _similar(first, j)]
        longest = max(j.tokens for j in group)
        return sum(len(j.arrays) for j in group) * longest >= self._token_budget

    def _take_by_tokens(self) -> list[_Job]:
        """The oldest request, then queued ones of similar length, in order, while the batch
        stays within max_batch_size items and the token budget (the oldest always goes, so
        nothing starves; the others keep their places)."""
        first = self._jobs.popleft()
        batch, kept = [first], deque()
        items, longest = len(first.arrays), first.tokens
        for job in self._jobs:
            n, width = items + len(job.arrays), max(longest, job.tokens)
            fits = n <= self.config.max_batch_size and n * width <= self._token_budget
            if fits and _similar(first, job):
                batch.append(job)
                items, longest = n, width
            else:
                kept.append(job)
        self._jobs = kept
        return batch

    def _live(self, batch: list[_Job]) -> list[_Job]:
        now, live = time.monotonic(), []
        for job in batch:
            if job.future.done():  # cancelled by its caller
                continue
            if job.deadline is not None and now > job.deadline:
                job.future.set_exception(
                    DeadlineExceededError("the deadline passed while the request was queued")
                )
                continue
            live.append(job)
        return live

    def _collate_and_run(self, arrays: list[np.ndarray], wide: bool = False
                         ) -> tuple[np.ndarray, float]:  # fmt: skip
        """The part's output and the CPU seconds it cost: its thread's, or for a wide run the
        process's meanwhile (onnxruntime's own threads; the other streams are idle then)."""
        clock = time.process_time if wide else time.thread_time
        started = clock()
        out = (self._run_wide if wide else self._run)(self._collate(arrays))
        return out, clock() - started

    def _parts(self, arrays: list[np.ndarray]) -> list[list[np.ndarray]]:
        """The batch in as many parts as there are free streams (each part big enough)."""
        if not self._split_min_items:
            return [arrays]
        k = max(1, min(self._free_streams, len(arrays) // self._split_min_items))
        bounds = np.linspace(0, len(arrays), k + 1).round().astype(int)
        return [arrays[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = self._live(await self._next_batch())
            if not batch:
                continue
            started = time.monotonic()
            arrays = [a for job in batch for a in job.arrays]
            parts = self._parts(arrays)
            streams = self.config.inference_streams
            # A lone request: the only one in its batch, none queued, every stream free.
            lone = len(batch) == 1 and not self._jobs and self._free_streams == streams
            wide = self._run_wide is not None and len(parts) == 1 and lone
            taken = streams if wide else len(parts)  # a wide run holds every stream's core
            self._free_streams -= taken
            try:
                outs = await asyncio.gather(
                    *(
                        loop.run_in_executor(self._executor, self._collate_and_run, part, wide)
                        for part in parts
                    ),
                    return_exceptions=True,
                )  # every part ends before its stream counts as free
                for part_out in outs:
                    if isinstance(part_out, BaseException):
                        raise part_out
                cpu_seconds = sum(cpu for _, cpu in outs)
                out = outs[0][0] if len(outs) == 1 else np.concatenate([o for o, _ in outs])
            except asyncio.CancelledError:  # closing: the callers must not wait forever
                _fail(batch, NotReadyError(f"model {self.name!r} shut down mid-batch; retry"))
                raise
            except Exception as exc:  # a failed run fails its batch, never the loop
                _fail(batch, exc)
                continue
            finally:
                self._free_streams += taken
                self._wakeup.set()  # a worker waiting for a free stream may go on
            self._expected = max(len(arrays), self._expected * 0.9)
            self._last_done = time.monotonic()
            inference_ms = (self._last_done - started) * 1000
            if self._on_batch:
                self._on_batch(len(arrays), inference_ms, cpu_seconds)
            offset = 0
            for job in batch:
                n = len(job.arrays)
                stats = BatchStats((started - job.enqueued) * 1000, inference_ms, len(arrays))
                if not job.future.done():
                    job.future.set_result((out[offset : offset + n], stats))
                offset += n


def _similar(first: _Job, job: _Job) -> bool:
    return first.tokens / LENGTH_GROUP <= job.tokens <= first.tokens * LENGTH_GROUP


def _fail(jobs, exc: BaseException) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(exc)
