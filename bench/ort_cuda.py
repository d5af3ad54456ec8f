"""Raw onnxruntime on a GPU with IO binding: the ceilings the service and batch export are
compared with on a GPU machine.

- host in/out: inputs bound from host memory, the output copied back to the host on every run
  (what any server must do: requests arrive in host memory);
- on the device: inputs copied to the GPU once, the output left there: the GPU's own bound.
Both on ready inputs (pixels, or texts already tokenised) and the model's own session, so the
file, provider options and graph are exactly what the service runs.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

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


def _loop(call, seconds: float) -> list[float]:
    call()  # warm: the first run of a shape allocates
    latencies, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(latencies) < 2:
        t = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t)
    return latencies


def host_io(session, feeds: dict[str, np.ndarray], seconds: float, callers: int = 1):
    """(items/s, latencies): `callers` threads each running the batch, host in, host out."""
    n = len(next(iter(feeds.values())))
    with ThreadPoolExecutor(callers) as pool:
        t0 = time.perf_counter()
        per = list(pool.map(lambda _: _loop(lambda: session.features(feeds), seconds),
                            range(callers)))  # fmt: skip
        wall = time.perf_counter() - t0
    latencies = [x for p in per for x in p]
    return n * (len(latencies) + callers) / wall, latencies


def on_device(session, feeds: dict[str, np.ndarray], seconds: float):
    """(items/s, latencies): inputs on the GPU, output left there."""
    import onnxruntime as ort

    raw = session.session
    binding = raw.io_binding()
    for name, value in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
    binding.bind_output("features", "cuda")
    n = len(next(iter(feeds.values())))
    t0 = time.perf_counter()
    latencies = _loop(lambda: raw.run_with_iobinding(binding), seconds)
    return n * (len(latencies) + 1) / (time.perf_counter() - t0), latencies
