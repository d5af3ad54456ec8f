"""Raw onnxruntime on a GPU with IO binding: the ceilings the service and batch export are
compared with on a GPU machine.

- host in/out: inputs bound from host memory, the output copied back to the host on every run
  (what any server must do: requests arrive in host memory);
- on the device: inputs copied to the GPU once, the output left there: the GPU's own bound.
Both on ready inputs (pixels, or texts already tokenised) and the model's own session, so the
file, provider options and graph are exactly what the service runs. Each caller's first run (a
new shape, a new thread: allocations) is a warm-up, outside the clock and the item count.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

TEXTS = [
    "The striker scored twice in the second half to win the cup final for the home side.",
    "Stock markets fell sharply after the central bank raised interest rates again.",
    "A cup of espresso on a wooden table next to a newspaper.",
    "Astronauts prepare for a launch to the international space station next week.",
]


def ready_inputs(session, batch: int, texts: list[str] | None = None) -> dict[str, np.ndarray]:
    """A batch the graph takes as it is: random uint8 pixels, or tokenised texts."""
    from embedder.core.inputs import Preprocessor

    m = session.manifest
    pre = Preprocessor(m, session.folder)
    if m.modality == "text":
        texts = texts or TEXTS
        return pre.collate(pre.texts((texts * batch)[:batch]))
    h, w = m.preprocess.size
    return {"pixels": np.random.default_rng(batch).integers(0, 256, (batch, h, w, 3), np.uint8)}


@dataclass
class Run:
    """What a timed run did: `items` in `wall` seconds, using `cpu` seconds of this process's
    CPU (every thread), one latency per call. Warm-up calls are in none of them."""

    items: int
    wall: float
    cpu: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.items / self.wall


def timed_calls(call, items_per_call: int, seconds: float, callers: int = 1) -> Run:
    """`callers` threads each calling `call` for about `seconds` (at least twice). Each caller
    first runs it once uncounted (the first run of a shape, and of a thread, allocates); the
    clock starts when every caller has, so warm-up is neither timed nor counted."""
    ready = threading.Barrier(callers + 1)

    def loop() -> list[float]:
        try:
            call()  # warm
        except BaseException:
            ready.abort()
            raise
        ready.wait()
        latencies, end = [], time.perf_counter() + seconds
        while time.perf_counter() < end or len(latencies) < 2:
            t = time.perf_counter()
            call()
            latencies.append(time.perf_counter() - t)
        return latencies

    with ThreadPoolExecutor(callers) as pool:
        futures = [pool.submit(loop) for _ in range(callers)]
        try:
            ready.wait()
        except threading.BrokenBarrierError:
            for f in futures:
                f.result()  # a warm-up call's error
            raise
        t0, cpu0 = time.perf_counter(), time.process_time()
        per = [f.result() for f in futures]
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    latencies = [x for p in per for x in p]
    return Run(items_per_call * len(latencies), wall, cpu, latencies)


def host_io(session, feeds: dict[str, np.ndarray], seconds: float, callers: int = 1) -> Run:
    """`callers` threads each running the batch, host in, host out."""
    n = len(next(iter(feeds.values())))
    return timed_calls(lambda: session.features(feeds), n, seconds, callers)


def on_device(session, feeds: dict[str, np.ndarray], seconds: float) -> Run:
    """Inputs on the GPU, output left there."""
    import onnxruntime as ort

    raw = session.session
    binding = raw.io_binding()
    for name, value in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
    binding.bind_output("features", "cuda")
    n = len(next(iter(feeds.values())))
    return timed_calls(lambda: raw.run_with_iobinding(binding), n, seconds)
