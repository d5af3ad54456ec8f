"""The dynamic batcher with a real onnxruntime session underneath."""

import asyncio
import threading
import time

import numpy as np
import onnxruntime as ort
import pytest

from embedder.core.errors import DeadlineExceededError, NotReadyError, QueueFullError
from embedder.engine.batcher import DynamicBatcher
from embedder.engine.config import BatchingConfig


@pytest.fixture
def session(tiny_repo):
    return ort.InferenceSession(
        str(tiny_repo / "tiny_image" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )


def make(session, calls, **cfg):
    def run(feeds):
        calls.append(len(feeds["pixels"]))
        return session.run(["features"], feeds)[0]

    def collate(arrays):
        return {"pixels": np.stack(arrays)}

    return DynamicBatcher("tiny", run, collate, BatchingConfig(**cfg))


def items(n, seed=0):
    return list(np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))


def test_concurrent_requests_share_a_batch_and_get_their_own_rows(session):
    async def main():
        calls = []
        b = make(session, calls, max_batch_size=32, max_queue_delay_ms=50)
        b.start()
        requests = [items(1, seed=i) for i in range(8)]
        results = await asyncio.gather(*(b.submit(r) for r in requests))
        await b.close()
        return calls, requests, results

    calls, requests, results = asyncio.run(main())
    assert calls == [8]  # one run for eight single-item requests
    for req, (out, stats) in zip(requests, results, strict=True):
        expected = session.run(["features"], {"pixels": np.stack(req)})[0]
        np.testing.assert_allclose(out, expected, atol=1e-5)
        assert stats.batch_items == 8


def test_large_request_split_into_max_batch_chunks(session):
    async def main():
        calls = []
        b = make(session, calls, max_batch_size=4, max_queue_delay_ms=1)
        b.start()
        out, _ = await b.submit(items(10))
        await b.close()
        return calls, out

    calls, out = asyncio.run(main())
    assert calls == [4, 4, 2] and out.shape == (10, 24)
    np.testing.assert_allclose(
        out, session.run(["features"], {"pixels": np.stack(items(10))})[0], atol=1e-5
    )


def test_expired_deadline_dropped_before_compute(session):
    async def main():
        calls = []
        b = make(session, calls, max_batch_size=8, max_queue_delay_ms=30)
        b.start()
        late = b.submit(items(2), deadline=time.monotonic() + 0.005)  # expires while queued
        on_time = b.submit(items(3), deadline=time.monotonic() + 10)
        results = await asyncio.gather(late, on_time, return_exceptions=True)
        await b.close()
        return calls, results

    calls, (late, on_time) = asyncio.run(main())
    assert isinstance(late, DeadlineExceededError)
    assert on_time[0].shape == (3, 24) and calls == [3]


def test_full_queue_refuses_immediately(session):
    async def main():
        b = make(session, [], max_batch_size=2, max_queue_delay_ms=1000, max_queue_size=3)
        b.start()
        first = asyncio.ensure_future(b.submit(items(3)))
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError, match="3 items waiting"):
            await b.submit(items(1))
        await asyncio.wait_for(first, 5)
        await b.close()

    asyncio.run(main())


def test_a_failing_run_fails_its_batch_not_the_loop(session):
    async def main():
        b = DynamicBatcher(
            "x", lambda feeds: 1 / 0, lambda a: a, BatchingConfig(max_queue_delay_ms=1)
        )
        b.start()
        with pytest.raises(ZeroDivisionError):
            await b.submit(items(1))
        with pytest.raises(ZeroDivisionError):  # the loop is still alive and answering
            await b.submit(items(1))
        await b.close()

    asyncio.run(main())


@pytest.mark.parametrize("returning_wait_ms", [0, 60_000])
def test_waits_for_the_callers_of_the_last_batch(session, returning_wait_ms):
    """After a batch of four, one caller comes back before the other three. Without a
    returning wait its item runs alone; with one (a minute here) it waits for them, and their
    four items, as many as the last batch held, go at once rather than at the wait's end."""

    async def main():
        calls = []
        b = make(session, calls, max_batch_size=8, returning_wait_ms=returning_wait_ms,
                 inference_streams=1)  # fmt: skip
        b.start()
        await asyncio.gather(*(b.submit(items(1, seed=i)) for i in range(4)))  # a batch of 4
        first = asyncio.ensure_future(b.submit(items(1)))  # its callers come back one by one
        if returning_wait_ms:
            await asyncio.sleep(0.2)  # no queue delay: without the wait it would have gone
            assert not first.done() and calls == [4]
        else:
            await asyncio.wait_for(first, 10)
        rest = [asyncio.ensure_future(b.submit(items(1, seed=i))) for i in range(3)]
        await asyncio.wait_for(asyncio.gather(first, *rest), 10)
        await b.close()
        return calls

    assert asyncio.run(main()) == ([4, 4] if returning_wait_ms else [4, 1, 3])


def test_two_streams_run_batches_side_by_side(session):
    """Each run waits for another run to be in progress: serial runs would break the barrier."""
    both_running = threading.Barrier(2, timeout=10)

    def run(feeds):
        both_running.wait()
        return session.run(["features"], feeds)[0]

    async def main():
        config = BatchingConfig(max_batch_size=4, max_queue_delay_ms=5, inference_streams=2)
        b = DynamicBatcher("tiny", run, lambda a: {"pixels": np.stack(a)}, config)
        b.start()
        # A lone item first: both workers wait for company, one takes it, the other must carry
        # on with an empty queue (it used to crash here and leave one stream).
        lone = asyncio.ensure_future(b.submit(items(1)))
        await asyncio.sleep(0.05)
        assert not lone.done()  # held at the barrier: nobody else is running
        second = asyncio.ensure_future(b.submit(items(1, seed=1)))
        (first_out, _), (second_out, _) = await asyncio.wait_for(asyncio.gather(lone, second), 10)
        requests = [items(4, seed=s) for s in (2, 3)]  # two full batches, one per stream
        results = await asyncio.wait_for(asyncio.gather(*(b.submit(r) for r in requests)), 10)
        await b.close()
        return first_out, second_out, requests, results

    first_out, second_out, requests, results = asyncio.run(main())
    expected = session.run(["features"], {"pixels": np.stack(items(1) + items(1, seed=1))})[0]
    np.testing.assert_allclose(np.vstack([first_out, second_out]), expected, atol=1e-5)
    for req, (out, _) in zip(requests, results, strict=True):
        np.testing.assert_allclose(
            out, session.run(["features"], {"pixels": np.stack(req)})[0], atol=1e-5
        )


def test_close_answers_queued_and_running_callers_and_refuses_new_ones(session):
    release = threading.Event()

    def run(feeds):
        release.wait(10)
        return session.run(["features"], feeds)[0]

    async def main():
        config = BatchingConfig(max_batch_size=1, inference_streams=1)
        b = DynamicBatcher("tiny", run, lambda a: {"pixels": np.stack(a)}, config)
        b.start()
        running = asyncio.ensure_future(b.submit(items(1)))
        queued = asyncio.ensure_future(b.submit(items(1, seed=1)))
        await asyncio.sleep(0.05)  # the first is in the run, the second waits behind it
        threading.Timer(0.2, release.set).start()  # the run itself cannot be interrupted
        await asyncio.wait_for(b.close(), 10)
        results = await asyncio.gather(running, queued, return_exceptions=True)
        with pytest.raises(NotReadyError, match="shutting down"):
            await b.submit(items(1))
        return results

    running, queued = asyncio.run(main())
    assert isinstance(running, NotReadyError) and "mid-batch" in str(running)
    assert isinstance(queued, NotReadyError) and "shutting down" in str(queued)


def test_reserved_room_counts_until_submitted_or_released(session):
    async def main():
        b = make(session, [], max_batch_size=4, max_queue_size=4)
        b.start()
        b.reserve(3)  # a request's items, still being preprocessed
        with pytest.raises(QueueFullError, match="3 items waiting"):
            await b.submit(items(2))
        b.release(3)  # that request failed: its room comes back
        b.reserve(4)
        out, _ = await b.submit(items(4), reserved=True)
        b.reserve(4)  # and once its batch was taken, the room came back too
        b.release(4)
        await b.close()
        return out

    assert asyncio.run(main()).shape == (4, 24)


def test_a_lone_batch_is_split_across_free_single_threaded_streams(session):
    async def main():
        calls = []
        config = BatchingConfig(max_batch_size=16, max_queue_delay_ms=20, inference_streams=2)
        b = DynamicBatcher("tiny", lambda feeds: (calls.append(len(feeds["pixels"])),
                                                  session.run(["features"], feeds)[0])[1],
                           lambda a: {"pixels": np.stack(a)}, config, split_min_items=4)  # fmt: skip
        b.start()
        lone, _ = await b.submit(items(10))  # both streams free: two parts
        small, _ = await b.submit(items(5, seed=1))  # too small for two parts of 4
        await b.close()
        return calls, lone, small

    calls, lone, small = asyncio.run(main())
    assert sorted(calls[:2]) == [5, 5] and calls[2:] == [5]
    np.testing.assert_allclose(lone, session.run(["features"], {"pixels": np.stack(items(10))})[0],
                               atol=1e-5)  # fmt: skip
    np.testing.assert_allclose(
        small, session.run(["features"], {"pixels": np.stack(items(5, seed=1))})[0], atol=1e-5
    )


def test_a_failing_part_fails_its_batch_and_frees_its_streams(session):
    async def main():
        config = BatchingConfig(max_batch_size=16, inference_streams=2)
        b = DynamicBatcher("x", lambda feeds: 1 / 0, lambda a: a, config, split_min_items=4)
        b.start()
        for _ in range(3):  # answered every time: the streams came back after each failure
            with pytest.raises(ZeroDivisionError):
                await asyncio.wait_for(b.submit(items(8)), 10)
        await b.close()

    asyncio.run(main())


def test_a_lone_small_batch_runs_on_every_core_only_when_every_stream_is_free(session, tiny_repo):
    """A lone request too small to split takes the wide session while nothing else runs; with a
    stream busy, or with company in its batch, it runs on a single stream."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    path = str(tiny_repo / "tiny_image" / "1" / "model.onnx")
    wide_session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    used, release = [], threading.Event()

    def narrow(feeds):
        used.append(("narrow", len(feeds["pixels"])))
        if len(feeds["pixels"]) == 4:  # the big batch's parts hold two of the three streams
            release.wait(10)
        return session.run(["features"], feeds)[0]

    def wide(feeds):
        used.append(("wide", len(feeds["pixels"])))
        return wide_session.run(["features"], feeds)[0]

    async def main():
        config = BatchingConfig(max_batch_size=16, inference_streams=3)
        b = DynamicBatcher("tiny", narrow, lambda a: {"pixels": np.stack(a)}, config,
                           split_min_items=4, run_wide=wide)  # fmt: skip
        b.start()
        lone, _ = await b.submit(items(3))  # every stream free: the wide session
        big = asyncio.ensure_future(b.submit(items(8, seed=1)))  # two parts of 4
        await asyncio.sleep(0.1)
        small, _ = await asyncio.wait_for(b.submit(items(2, seed=2)), 10)  # one stream free
        release.set()
        big_out, _ = await asyncio.wait_for(big, 10)
        await asyncio.gather(b.submit(items(1, seed=3)), b.submit(items(1, seed=4)))
        await b.close()
        return lone, big_out, small

    lone, big_out, small = asyncio.run(main())
    # Two requests in one batch are not lone: concurrent clients keep to single streams.
    assert used == [("wide", 3), ("narrow", 4), ("narrow", 4), ("narrow", 2), ("narrow", 2)]
    for out, batch in ((lone, items(3)), (big_out, items(8, seed=1)), (small, items(2, seed=2))):
        expected = session.run(["features"], {"pixels": np.stack(batch)})[0]
        np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.fixture
def text_model(tiny_repo):
    from embedder.core.inputs import Preprocessor
    from embedder.core.manifest import Manifest

    folder = tiny_repo / "tiny_text" / "1"
    pre = Preprocessor(Manifest.read(folder), folder)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return pre, session


LONG = "the striker scored twice in the second half to win the cup final for the home side today"


def test_text_batches_group_similar_lengths_and_keep_to_the_token_budget(text_model):
    """Queued: long, short, long, short. The oldest (long) goes with the other long one; the
    short ones ride together, never padded to a long one's length."""
    pre, session = text_model
    widths = []

    def run(feeds):
        widths.append(feeds["input_ids"].shape)
        return session.run(["features"], feeds)[0]

    async def main():
        config = BatchingConfig(max_batch_size=16, inference_streams=1)
        b = DynamicBatcher("t", run, pre.collate, config, token_budget=64)
        texts = [LONG, "a cat", LONG + " again", "the dog"]
        calls = [asyncio.ensure_future(b.submit(pre.texts([t]))) for t in texts]
        await asyncio.sleep(0)  # all four queued before the batcher starts
        b.start()
        outs = await asyncio.wait_for(asyncio.gather(*calls), 10)
        await b.close()
        return texts, [o for o, _ in outs]

    texts, outs = asyncio.run(main())
    long_width, short_width = len(pre.texts([LONG])[0]), len(pre.texts(["a cat"])[0])
    assert long_width > 2 * short_width
    assert widths == [(2, long_width), (2, max(short_width, len(pre.texts(["the dog"])[0])))]
    for text, out in zip(texts, outs, strict=True):
        alone = session.run(["features"], pre.collate(pre.texts([text])))[0]
        np.testing.assert_allclose(out, alone, atol=1e-5)


def test_a_text_batch_leaves_when_its_tokens_fill_the_budget(text_model):
    """With a long queue delay, requests that fill the token budget go at once, in batches
    that keep to it."""
    pre, session = text_model
    sizes = []

    def run(feeds):
        sizes.append(len(feeds["input_ids"]))
        return session.run(["features"], feeds)[0]

    async def main():
        width = len(pre.texts([LONG])[0])
        config = BatchingConfig(max_batch_size=16, max_queue_delay_ms=60_000, inference_streams=1)
        b = DynamicBatcher("t", run, pre.collate, config, token_budget=2 * width)
        b.start()
        calls = [b.submit(pre.texts([LONG])) for _ in range(4)]
        await asyncio.wait_for(asyncio.gather(*calls), 10)  # not the 60 s delay
        await b.close()

    asyncio.run(main())
    assert sizes == [2, 2]
