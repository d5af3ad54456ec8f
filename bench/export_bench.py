"""Batch export vs its ceiling, cached reruns, Ray overhead, and cache loading speed.

    python bench/export_bench.py --repo models --images 1024 --models mobilenet_v2 dinov2_small

Cores are the ones this process may run on (its affinity). Ceiling: in-process onnxruntime on
images already decoded to pixels, the best rate over batch sizes 1-32, run one at a time with
every core, two side by side with half each, or one per core; sessions opened and warmed
beforehand. Cold export: `export_features` with its defaults on the same images as JPEG files
(decode in worker threads, overlapped with inference), timed whole (model loading included)
and in steady state: a second cold export of an eighth of the images gives the fixed cost,
which the difference of the two removes. Then the CPU per image of inference and of
preprocessing alone, and the bound they set with every core busy. For the first model: the
same export again, all cached (three times, the median counts); Ray (started before timing;
its start-up is reported on its own); `load_features` on 200k x 512.

On a GPU (`--provider cuda`, bench/gpu_export.py): the export against the lower of two bounds,
the GPU's (raw onnxruntime-CUDA with IO binding, batch 64, host in/out) and the CPU's (reading,
hashing and decoding, or tokenising, in one worker process per core, as the export prepares
items on a GPU machine), for images and for BBC News texts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from embedder.cache import CacheIdentity, EmbeddingCache, load_features  # noqa: E402
from embedder.core.inputs import Preprocessor  # noqa: E402
from embedder.core.preprocess import preprocess_image_bytes  # noqa: E402
from embedder.core.sources import image_folder  # noqa: E402
from embedder.features import FeaturesConfig, export_features  # noqa: E402
from embedder.features.local import batch_session  # noqa: E402
from embedder.features.prepare import make_preparer  # noqa: E402


def make_photos(folder: Path, n: int) -> list[Path]:
    """JPEGs of about ImageNet's typical size (500 x 375), cut from the bundled photos."""
    import skimage.data

    sources = [skimage.data.coffee(), skimage.data.chelsea(), skimage.data.astronaut(),
               skimage.data.rocket()]  # fmt: skip
    photos = [Image.fromarray(s).resize((640, 480)) for s in sources]
    rng = np.random.default_rng(0)
    corners = rng.integers(0, (140, 105), (n, 2))

    def write(i: int) -> Path:
        left, top = corners[i]
        crop = photos[i % len(photos)].crop((left, top, left + 500, top + 375))
        if i % 2:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = folder / f"{i:05d}.jpg"
        crop.save(path, quality=90)
        return path

    with ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool:
        return list(pool.map(write, range(n)))


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of fn()."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


BATCH_SIZES = (1, 2, 4, 8, 16, 32)


def ceiling(config: FeaturesConfig, paths: list[Path], seconds: float) -> dict:
    """The best in-process rate on decoded pixels over batch sizes, run one at a time with
    every core or two side by side with half the cores each; with its CPU ms per image."""
    best: dict = {"rate": 0.0}
    pixels = None
    cores = len(os.sched_getaffinity(0))
    for streams in sorted({1, 2, cores}):
        session = batch_session(replace(config, intra_op_threads=max(1, cores // streams)))
        if pixels is None:  # decoded once
            cfg = session.manifest.preprocess
            pixels = np.stack([preprocess_image_bytes(p.read_bytes(), cfg) for p in paths])
        for size in (s for s in BATCH_SIZES if s <= len(paths)):
            rate, cpu_ms = _run_for(session, pixels, size, streams, seconds)
            if rate > best["rate"]:
                best = {"rate": rate, "cpu_ms": cpu_ms, "streams": streams, "batch": size}
    return best


def _run_for(session, pixels: np.ndarray, size: int, streams: int, seconds: float):
    """(items/s, CPU ms per item) of `streams` callers running batches of `size` in turn
    for about `seconds` (at least two batches each)."""
    batches = [pixels[i : i + size] for i in range(0, len(pixels) - size + 1, size)]
    session.run({"pixels": batches[0]})  # warm
    deadline = time.perf_counter() + seconds

    def caller(first: int) -> int:
        done, i = 0, first
        while done < 2 * size or time.perf_counter() < deadline:
            session.run({"pixels": batches[i % len(batches)]})
            done, i = done + size, i + streams
        return done

    counts = []
    with ThreadPoolExecutor(streams) as pool:
        wall, cpu = _timed(lambda: counts.extend(pool.map(caller, range(streams))))
    return sum(counts) / wall, 1000 * cpu / sum(counts)


def preprocessing_ms(config: FeaturesConfig, paths: list[Path]) -> float:
    """CPU ms per image to read, hash, decode and resize, on one thread."""
    session = batch_session(config)
    pre = Preprocessor(session.manifest, session.folder, config.max_image_pixels)
    prepare = make_preparer(session.manifest, pre, set())
    items = list(image_folder(paths[0].parent))
    _, cpu = _timed(lambda: [prepare(item) for item in items])
    return 1000 * cpu / len(items)


def timed_export(items: list, config: FeaturesConfig) -> tuple[float, float, object]:
    """(wall seconds, CPU ms per embedded item, summary)."""
    result = {}
    wall, cpu = _timed(lambda: result.update(s=export_features(items, config)))
    summary = result["s"]
    return wall, 1000 * cpu / max(1, summary.embedded), summary


def cold_export(items: list, config: FeaturesConfig, work: Path) -> dict:
    """The whole cold export, and its steady rate: the export of an eighth of the items, into
    another cache, measures the fixed cost (loading the model, first batch, writing the run)."""
    part = items[: len(items) // 8]
    part_s, _, part_summary = timed_export(part, replace(config, cache=work / "part"))
    seconds, cpu_ms, summary = timed_export(items, config)
    steady = (summary.embedded - part_summary.embedded) / (seconds - part_s)
    fixed = part_s - part_summary.embedded / steady
    return dict(seconds=seconds, cpu_ms=cpu_ms, summary=summary, steady=steady, fixed=fixed)


def loading(rows: int, dim: int, work: Path) -> tuple[float, float]:
    ident = CacheIdentity("bench", "1", dim, "0" * 64, "1" * 64)
    cache = EmbeddingCache(work / "load", ident)
    rng = np.random.default_rng(0)
    shard = rows // 10
    for s in range(10):
        keys = [f"{s:02d}-{i:07d}" for i in range(shard)]
        cache.append(keys, rng.standard_normal((shard, dim), np.float32), ["a"] * shard, keys)
    started = time.perf_counter()
    features = load_features(cache.folder)
    seconds = time.perf_counter() - started
    return seconds, features.X.nbytes / 1e6


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repo", type=Path, default=Path("models"))
    p.add_argument("--models", nargs="+", default=["mobilenet_v2"])
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--seconds", type=float, default=3.0, help="per ceiling cell")
    p.add_argument("--no-ray", action="store_true")
    p.add_argument("--provider", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--json", type=Path, help="GPU: also write the figures here")
    args = p.parse_args()
    if args.provider == "cuda":
        from gpu_export import main as gpu_main

        return gpu_main(args)
    work = Path(tempfile.mkdtemp(prefix="export-bench-"))
    try:
        folder = work / "photos"
        folder.mkdir()
        paths = make_photos(folder, args.images)
        items = list(image_folder(folder))
        cores = len(os.sched_getaffinity(0))
        print(f"{len(paths)} JPEGs of 500 x 375, {cores} cores\n")
        print("| model | ceiling items/s | cold export items/s | vs ceiling | steady state "
              "items/s | vs ceiling | fixed cost s | CPU bound vs ceiling |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        notes, colds, winners = [], {}, []
        for name in args.models:
            base = dict(repo=args.repo, model=name, progress=False)
            config = FeaturesConfig(cache=work / f"cache-{name}", **base)
            best = ceiling(config, paths, args.seconds)
            top, inference_ms = best["rate"], best["cpu_ms"]
            winners.append(f"{name} {best['streams']} x batch {best['batch']}")
            prep_ms = preprocessing_ms(config, paths)
            cold = colds[name] = cold_export(items, config, work / f"part-{name}")
            whole = cold["summary"].embedded / cold["seconds"]
            bound = cores * 1000 / (inference_ms + prep_ms)
            print(f"| {name} | {top:.1f} | {whole:.1f} | {whole / top:.2f} | "
                  f"{cold['steady']:.1f} | {cold['steady'] / top:.2f} | {cold['fixed']:.2f} | "
                  f"{min(bound, top) / top:.2f} |")  # fmt: skip
            notes.append(f"{name}: inference {inference_ms:.2f} ms (ceiling run), read + hash + "
                         f"decode + resize {prep_ms:.2f} ms (one thread), whole cold export "
                         f"{cold['cpu_ms']:.2f} ms")  # fmt: skip
        print("\nCeiling (streams x batch size): " + ", ".join(winners) + ".")
        print("CPU per image: " + "; ".join(notes) + ".")
        print(f"CPU bound: {cores} cores / (inference + preprocessing) per image.\n")

        name = args.models[0]  # its cache is full now
        config = replace(config, model=name, cache=work / f"cache-{name}")
        cold_s = colds[name]["seconds"]
        reruns = [timed_export(items, config) for _ in range(3)]
        warm_s, _, again = sorted(reruns, key=lambda r: r[0])[1]  # the median of three
        print(f"| {name} | items | seconds | items/s | vs cold |\n|---|---|---|---|---|")
        row = "| {} | {} | {:.2f} | {:.1f} | {} |"
        print(row.format("rerun, everything cached (median of 3)", again.from_cache, warm_s,
                         again.from_cache / warm_s, f"{cold_s / warm_s:.0f}x faster"))  # fmt: skip
        if not args.no_ray:
            import ray

            started = time.perf_counter()
            ray.init(include_dashboard=False, log_to_driver=False)
            init_s = time.perf_counter() - started
            ray_config = replace(config, cache=work / "ray", engine="ray")
            ray_s, _, on_ray = timed_export(items, ray_config)
            rate = on_ray.embedded / ray_s
            actors = ray_config.ray_actors
            what = f"Ray Data, local, {actors} actors (ray.init {init_s:.1f} s not counted)"
            print(row.format(what, on_ray.embedded, ray_s, rate, f"{cold_s / ray_s:.2f}x"))
            ray.shutdown()
        seconds, mb = loading(200_000, 512, work)
        print(f"\nload_features: 200,000 x 512 float32 ({mb:.0f} MB, 10 shards) in {seconds:.2f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
