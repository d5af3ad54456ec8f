"""Batch export on a GPU machine, against the lower of its two bounds (export_bench --provider
cuda): the GPU's, raw onnxruntime-CUDA with IO binding at batch 64 with host in/out on ready
inputs (one or two callers, the better; the export keeps two batches in flight), and the
CPU's, reading, hashing and decoding (or tokenising) every item in worker processes, one per
core this process may use, with nothing else running: the way the export prepares items on a
GPU machine (`prepare_processes`). For reference the table also gives the same work on as many
threads (the export's way on a CPU), which is not part of the bound.
Images: JPEG photos of 500 x 375 cut from the bundled ones; texts: the 2225 BBC News articles.

    python bench/export_bench.py --repo models --provider cuda --models mobilenet_v2 minilm_l6
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import export_bench as eb
from ort_cuda import host_io, ready_inputs

from embedder.core.inputs import Preprocessor
from embedder.core.repository import model_folder
from embedder.core.sources import image_folder, text_table
from embedder.features import FeaturesConfig
from embedder.features.local import batch_session
from embedder.features.prepare import make_preparer, prepare_in_worker, process_pool


def prepare_threads(config: FeaturesConfig, items: list, cores: int) -> float:
    """Items/s of reading, hashing and preprocessing alone, in chunks of 8 on `cores` threads."""
    session = batch_session(config)
    pre = Preprocessor(session.manifest, session.folder, config.max_image_pixels)
    prepare = make_preparer(session.manifest, pre, set())
    chunks = [items[i : i + 8] for i in range(0, len(items), 8)]
    with ThreadPoolExecutor(cores) as pool:
        started = time.perf_counter()
        list(pool.map(lambda chunk: [prepare(item) for item in chunk], chunks))
        return len(items) / (time.perf_counter() - started)


def prepare_processes(config: FeaturesConfig, items: list, cores: int) -> float:
    """The same work on `cores` worker processes (batch export's own pool), arrays sent back."""
    chunks = [items[i : i + 8] for i in range(0, len(items), 8)]
    folder = model_folder(config.repo, config.model, config.version)
    with process_pool(folder, config.max_image_pixels, set(), cores) as pool:
        list(pool.map(prepare_in_worker, chunks[:cores]))  # workers started and warm
        started = time.perf_counter()
        list(pool.map(prepare_in_worker, chunks))
        return len(items) / (time.perf_counter() - started)


def gpu_bound(config: FeaturesConfig, texts: list[str] | None, paths: list[Path],
              seconds: float) -> float:  # fmt: skip
    """Raw onnxruntime-CUDA, batch 64, host in/out, one or two callers: the better rate."""
    session = batch_session(config)
    if texts is None:
        import numpy as np

        from embedder.core.preprocess import preprocess_image_bytes

        cfg = session.manifest.preprocess
        pixels = np.stack([preprocess_image_bytes(p.read_bytes(), cfg) for p in paths[:64]])
        feeds = {"pixels": pixels}
    else:
        feeds = ready_inputs(session, 64, texts[:64])
    return max(host_io(session, feeds, seconds, callers).rate for callers in (1, 2))


def bbc_items(work: Path) -> tuple[list, list[str]]:
    from heads.datasets import bbc_news

    texts, labels = bbc_news()
    table = work / "bbc.jsonl"
    with table.open("w") as f:
        for text, label in zip(texts, labels, strict=True):
            f.write(json.dumps({"text": text, "label": str(label)}) + "\n")
    return list(text_table(table, "text", "label")), texts


def measure(name: str, data: str, items: list, texts, paths, config, work: Path,
            seconds: float) -> dict:  # fmt: skip
    cores = len(os.sched_getaffinity(0))
    gpu = gpu_bound(config, texts, paths, seconds)
    threads = max(prepare_threads(config, items, cores) for _ in range(2))  # first: from disk
    one = prepare_threads(config, items[:300], 1)
    # the CPU's bound: preparing items as the export does on a GPU, the better of two runs
    processes = max(prepare_processes(config, items, cores) for _ in range(2))
    cold = eb.cold_export(items, config, work / f"part-{name}-{data}")
    whole = cold["summary"].embedded / cold["seconds"]
    bound = min(gpu, processes)
    return {"model": name, "data": data, "items": cold["summary"].embedded,
            "gpu_bound": gpu, "cpu_bound_processes": processes, "cores": cores,
            "cpu_threads": threads,
            "cpu_one_thread": one, "export": whole,
            "export_vs_bound": whole / bound, "steady": cold["steady"],
            "steady_vs_bound": cold["steady"] / bound, "fixed_s": cold["fixed"],
            "batch_size": 64}  # fmt: skip


def main(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="gpu-export-bench-"))
    rows = []
    try:
        folder = work / "photos"
        folder.mkdir()
        paths = eb.make_photos(folder, args.images)
        images = list(image_folder(folder))
        bbc, texts = bbc_items(work)
        print("| model | data | items | GPU bound items/s | CPU bound items/s, processes "
              "(cores) | for reference: threads items/s | export items/s | vs lower bound | "
              "steady items/s | vs lower bound | fixed s |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for name in args.models:
            config = FeaturesConfig(repo=args.repo, model=name, provider="cuda",
                                       cache=work / f"cache-{name}", progress=False)  # fmt: skip
            text_model = batch_session(config).manifest.modality == "text"
            data, items = ("BBC News", bbc) if text_model else (f"{len(paths)} JPEGs", images)
            r = measure(name, data, items, texts if text_model else None, paths,
                        config, work, args.seconds)  # fmt: skip
            rows.append(r)
            print(f"| {name} | {data} | {r['items']} | {r['gpu_bound']:.0f} | "
                  f"{r['cpu_bound_processes']:.0f} ({r['cores']}) | {r['cpu_threads']:.0f} | "
                  f"{r['export']:.0f} | "
                  f"{r['export_vs_bound']:.2f} | {r['steady']:.0f} | {r['steady_vs_bound']:.2f} "
                  f"| {r['fixed_s']:.2f} |")  # fmt: skip
        if args.json:
            args.json.write_text(json.dumps({"export": rows}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
