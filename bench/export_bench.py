"""Batch export vs its ceiling, cached reruns, Ray overhead, and cache loading speed.

    python bench/export_bench.py --repo models --images 512

Ceiling: in-process onnxruntime on images already decoded to pixels (batch 32). Cold export:
`export_features` on the same images as JPEG files (decode in worker threads, overlapped with
inference). Cached: the same export again. Ray: the same export on a local Ray (started before
timing; its start-up is reported on its own). Loading: `load_features` on 200k x 512 rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embedder.batch_export import BatchExportConfig, export_features, open_model  # noqa: E402
from embedder.cache import CacheIdentity, EmbeddingCache, load_features  # noqa: E402
from embedder.preprocess import preprocess_image_bytes  # noqa: E402
from embedder.sources import image_folder  # noqa: E402


def make_photos(folder: Path, n: int) -> list[Path]:
    """JPEGs of about ImageNet's typical size (500 x 375), cut from the bundled photos."""
    import skimage.data

    sources = [skimage.data.coffee(), skimage.data.chelsea(), skimage.data.astronaut(),
               skimage.data.rocket()]  # fmt: skip
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        photo = Image.fromarray(sources[i % len(sources)]).resize((640, 480))
        left, top = rng.integers(0, 140), rng.integers(0, 105)
        crop = photo.crop((left, top, left + 500, top + 375))
        if i % 2:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = folder / f"{i:05d}.jpg"
        crop.save(path, quality=90)
        paths.append(path)
    return paths


def ceiling(config: BatchExportConfig, paths: list[Path]) -> float:
    """The best in-process rate: one session, onnxruntime's default threads (all cores)."""
    session = open_model(dataclasses.replace(config, intra_op_threads=0))
    cfg = session.manifest.preprocess
    pixels = np.stack([preprocess_image_bytes(p.read_bytes(), cfg) for p in paths])
    session.run({"pixels": pixels[:32]})  # warm
    started = time.perf_counter()
    for i in range(0, len(pixels), config.batch_size):
        session.run({"pixels": pixels[i : i + config.batch_size]})
    return len(pixels) / (time.perf_counter() - started)


def timed_export(folder: Path, config: BatchExportConfig) -> tuple[float, object]:
    started = time.perf_counter()
    summary = export_features(image_folder(folder), config)
    return time.perf_counter() - started, summary


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
    p.add_argument("--model", default="mobilenet_v2")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--decode-workers", type=int, default=2)
    p.add_argument("--no-ray", action="store_true")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="export-bench-"))
    try:
        folder = work / "photos"
        folder.mkdir()
        paths = make_photos(folder, args.images)
        base = dict(repo=args.repo, model=args.model, progress=False,
                    decode_workers=args.decode_workers)  # fmt: skip
        config = BatchExportConfig(cache=work / "cache", **base)
        top = ceiling(config, paths)
        cold_s, summary = timed_export(folder, config)
        warm_s, again = timed_export(folder, config)
        print("| run | items | seconds | items/s | vs ceiling |\n|---|---|---|---|---|")
        row = "| {} | {} | {:.2f} | {:.1f} | {} |"
        print(
            row.format(
                "ceiling: in-process on decoded pixels", len(paths), len(paths) / top, top, "1.00"
            )
        )
        cold = summary.embedded / cold_s
        print(
            row.format(
                "cold export from JPEG files", summary.embedded, cold_s, cold, f"{cold / top:.2f}"
            )
        )
        speedup = f"{cold_s / warm_s:.0f}x faster than cold"
        print(
            row.format(
                "rerun, everything cached",
                again.from_cache,
                warm_s,
                again.from_cache / warm_s,
                speedup,
            )
        )
        if not args.no_ray:
            import ray

            started = time.perf_counter()
            ray.init(include_dashboard=False, log_to_driver=False)
            init_s = time.perf_counter() - started
            ray_config = BatchExportConfig(cache=work / "ray", engine="ray", **base)
            ray_s, on_ray = timed_export(folder, ray_config)
            rate = on_ray.embedded / ray_s
            actors = ray_config.ray_actors
            name = f"Ray Data, local, {actors} actors (ray.init {init_s:.1f} s not counted)"
            ratio = f"{rate / top:.2f} ({rate / cold:.2f} of local export)"
            print(row.format(name, on_ray.embedded, ray_s, rate, ratio))
            ray.shutdown()
        seconds, mb = loading(200_000, 512, work)
        print(f"\nload_features: 200,000 x 512 float32 ({mb:.0f} MB, 10 shards) in {seconds:.2f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
