"""In-process speed of a model's fp32 file against its int8 variant (and any other files given),
in alternating rounds, with each variant's fidelity gate from the manifest.

    python bench/quant_bench.py --repo models --model minilm_l6 --rounds 5
    python bench/quant_bench.py --repo models --model mobilenet_v2 --also /tmp/candidate.onnx
    python bench/quant_bench.py --repo models --model efficientnet_lite0 --stems 1,3,6,9 --gate
    python bench/quant_bench.py --repo models --model efficientnet_lite0 --stems 6 --nearest

Texts: the first 512 BBC News articles cut to 128 tokens, batch 32 (the peer benchmark's load).
Images: 128 random 224 x 224 pixel arrays, batch 4 (the CPU batch size). One session per file,
every core; each round measures every file once, in turn, the order reversed every other round
(A, B, C then C, B, A: drift over the sitting falls on every file alike), and the table holds
the medians of the per-round rates and of the per-round ratios to fp32. `--stems` adds the static int8 recipe
of a CNN with each of those stem lengths kept fp32 (export/quantize.py; with its calibrated
rounding, and `--nearest` adds the same stems with nearest rounding), and `--gate` measures
the fidelity gate of every file on the export's probe sets (otherwise the manifest's is shown).
Sessions are built as the server builds them (`cpu_session`); `--fused` adds each file with
onnxruntime's every fusion, SkipLayerNormalization included.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embedder.core.inputs import Preprocessor  # noqa: E402
from embedder.core.manifest import Manifest, gate_summary  # noqa: E402
from embedder.core.runtime import CPU, cpu_session  # noqa: E402
from export.fidelity import items_in  # noqa: E402


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
    started = time.perf_counter()
    for f in feeds:
        session.run(["features"], f)
    return items_in(feeds) / (time.perf_counter() - started)


def alternating(names: list, round_index: int) -> list:
    """`names` in order in even rounds, reversed in odd ones (A, B then B, A)."""
    return list(names) if round_index % 2 == 0 else list(reversed(names))


def backbone_of(manifest: Manifest, folder: Path) -> SimpleNamespace:
    """What export/fidelity.py reads from a backbone, rebuilt from an exported model."""
    extra = {}
    if manifest.modality == "text":
        extra = {manifest.preprocess.tokenizer_file: folder / manifest.preprocess.tokenizer_file}
    return SimpleNamespace(modality=manifest.modality, preprocess=manifest.preprocess,
                           extra_files=extra)  # fmt: skip


def recipe_inputs(manifest: Manifest, folder: Path, out: Path) -> tuple:
    """What the static int8 recipe of a CNN starts from: the fp32 file with every node named
    (under out), the calibration batches, their calibrated rounding and activation ranges."""
    from export.fidelity import calibration_feeds
    from export.quantize import calibration_chunks, fp32_ranges, with_node_names
    from export.rounding import calibrated_weights

    calibration = calibration_feeds(backbone_of(manifest, folder))
    src = with_node_names(folder / manifest.file, out)
    rounded = calibrated_weights(src, calibration_chunks(calibration))
    return src, calibration, rounded, fp32_ranges(src, calibration, out)


def stem_variants(manifest: Manifest, folder: Path, stems: list[int], out: Path,
                  nearest: bool) -> dict:  # fmt: skip
    """The static int8 recipe with each stem length, written under out (and with nearest
    rounding as well when asked)."""
    from export.quantize import quiet_quantiser, stem_int8

    src, calibration, rounded, ranges = recipe_inputs(manifest, folder, out)
    files = {}
    for k in stems:
        for how, chosen in [("", rounded), *([(" nearest", None)] if nearest else [])]:
            name = f"static int8, stem {k}{how}"
            files[name] = out / f"stem{k}{how.replace(' ', '.')}.onnx"
            with quiet_quantiser():
                stem_int8(src, files[name], k, calibration, ranges, chosen)
    return files


def gates(manifest: Manifest, folder: Path, sessions: dict) -> dict[str, str]:
    """Each file's fidelity gate, measured now against the fp32 file."""
    from export.fidelity import embed_fp32, gate, probe_sets

    probes = probe_sets(backbone_of(manifest, folder))
    embed_fp32(probes, sessions["fp32"])
    return {name: gate_summary(gate(probes, s)) for name, s in sessions.items()}


def model_parser(doc: str, model: str) -> argparse.ArgumentParser:
    """The arguments of every in-process benchmark of an exported model."""
    p = argparse.ArgumentParser(description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--repo", type=Path, default=Path("models"))
    p.add_argument("--model", default=model)
    p.add_argument("--version", default="1")
    return p


def main() -> None:
    import onnxruntime as ort

    p = model_parser(__doc__, "minilm_l6")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--also", type=Path, nargs="*", default=[], help="other files to compare")
    p.add_argument("--stems", default="", help="e.g. 1,3,6,9: static int8 with these fp32 stems")
    p.add_argument("--nearest", action="store_true", help="--stems with nearest rounding too")
    p.add_argument("--gate", action="store_true", help="measure every file's fidelity gate")
    p.add_argument(
        "--fused",
        action="store_true",
        help="each file also with every onnxruntime fusion (CPU_UNFUSED undone)",
    )
    args = p.parse_args()
    folder = args.repo / args.model / args.version
    manifest = Manifest.read(folder)
    files = {"fp32": folder / manifest.file}
    files |= {k: folder / v.file for k, v in manifest.variants.items() if v.intended_for == "CPU"}
    files |= {f.name: f for f in args.also}
    scratch = tempfile.TemporaryDirectory(prefix="quant_bench.")  # removed at exit
    if args.stems:
        stems = [int(k) for k in args.stems.split(",")]
        files |= stem_variants(manifest, folder, stems, Path(scratch.name), args.nearest)
    options = ort.SessionOptions()
    options.intra_op_num_threads = len(os.sched_getaffinity(0))
    sessions = {k: cpu_session(f, options) for k, f in files.items()}
    if args.fused:
        sessions |= {f"{k}, fused": ort.InferenceSession(str(f), options, providers=[CPU])
                     for k, f in files.items()}  # fmt: skip
    feeds = workload(manifest, folder)
    for s in sessions.values():
        rate(s, feeds[:2])  # warm
    rates: dict[str, list[float]] = {k: [] for k in sessions}
    for r in range(args.rounds):
        for k in alternating(list(sessions), r):
            rates[k].append(rate(sessions[k], feeds))
    measured = gates(manifest, folder, sessions) if args.gate else {}
    print(f"{args.model}, {len(os.sched_getaffinity(0))} cores, {args.rounds} alternating rounds")
    print("| file | items/s (median) | vs fp32 (median of rounds) | fidelity gate |")
    print("|---|---|---|---|")
    for k, values in rates.items():
        ratio = np.median(np.array(values) / np.array(rates["fp32"]))
        variant = manifest.variants.get(k)
        gate = measured.get(k) or (variant.gate_summary() if variant else "")
        print(f"| {k} | {np.median(values):.1f} | {ratio:.2f} | {gate} |")


if __name__ == "__main__":
    main()
