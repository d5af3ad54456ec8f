"""In-process speed of a model's fp32 file against its int8 variant (and any other files given),
in alternating rounds, with each variant's fidelity gate from the manifest.

    python bench/quant_bench.py --repo models --model minilm_l6 --rounds 5
    python bench/quant_bench.py --repo models --model mobilenet_v2 --also /tmp/candidate.onnx

Texts: the first 512 BBC News articles cut to 128 tokens, batch 32 (the peer benchmark's load).
Images: 128 random 224 x 224 pixel arrays, batch 4 (the CPU batch size). One session per file,
every core; each round measures every file once, in turn, and the table holds the medians of
the per-round rates and of the per-round ratios to fp32.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embedder.core.inputs import Preprocessor  # noqa: E402
from embedder.core.manifest import Manifest  # noqa: E402


def workload(manifest: Manifest, folder: Path) -> list[dict[str, np.ndarray]]:
    if manifest.modality == "text":
        from dataclasses import replace

        from heads.datasets import bbc_news

        texts = bbc_news()[0][:512]
        cfg = replace(manifest.preprocess, max_length=128, truncation=True)
        pre = Preprocessor(replace(manifest, preprocess=cfg), folder)
        return [pre.collate(pre.texts(texts[i : i + 32])) for i in range(0, len(texts), 32)]
    h, w = manifest.preprocess.size
    pixels = np.random.default_rng(0).integers(0, 256, (128, h, w, 3), np.uint8)
    return [{"pixels": pixels[i : i + 4]} for i in range(0, len(pixels), 4)]


def rate(session, feeds: list[dict[str, np.ndarray]]) -> float:
    started, items = time.perf_counter(), 0
    for f in feeds:
        session.run(["features"], f)
        items += len(next(iter(f.values())))
    return items / (time.perf_counter() - started)


def main() -> None:
    import onnxruntime as ort

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--repo", type=Path, default=Path("models"))
    p.add_argument("--model", default="minilm_l6")
    p.add_argument("--version", default="1")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--also", type=Path, nargs="*", default=[], help="other files to compare")
    args = p.parse_args()
    folder = args.repo / args.model / args.version
    manifest = Manifest.read(folder)
    files = {"fp32": folder / manifest.file}
    files |= {k: folder / v.file for k, v in manifest.variants.items() if v.intended_for == "CPU"}
    files |= {f.name: f for f in args.also}
    options = ort.SessionOptions()
    options.intra_op_num_threads = len(os.sched_getaffinity(0))
    sessions = {k: ort.InferenceSession(str(f), options, providers=["CPUExecutionProvider"])
                for k, f in files.items()}  # fmt: skip
    feeds = workload(manifest, folder)
    for s in sessions.values():
        rate(s, feeds[:2])  # warm
    rates: dict[str, list[float]] = {k: [] for k in files}
    for _ in range(args.rounds):
        for k, s in sessions.items():
            rates[k].append(rate(s, feeds))
    print(f"{args.model}, {len(os.sched_getaffinity(0))} cores, {args.rounds} alternating rounds")
    print("| file | items/s (median) | vs fp32 (median of rounds) | fidelity gate |")
    print("|---|---|---|---|")
    for k, values in rates.items():
        ratio = np.median(np.array(values) / np.array(rates["fp32"]))
        variant = manifest.variants.get(k)
        gate = variant.gate_summary() if variant else ""
        print(f"| {k} | {np.median(values):.1f} | {ratio:.2f} | {gate} |")


if __name__ == "__main__":
    main()
