"""Where a CNN's int8 loses its fidelity: weights and activations quantised apart and together,
with 8- and 16-bit activations, each through the export's fidelity gate, and the speed of the
graphs a server could serve.

    python bench/int8_bound.py --repo models --model mobilenet_v2 --stems 1,6

For each stem (leading convolutions kept fp32, as in export/quantize.py's recipe):
- weights int8, activations fp32: the calibrated rounding's weights written back in fp32;
- activations uintN per tensor, weights fp32: the static QDQ graph with each weight's and
  bias's DequantizeLinear replaced by the fp32 tensor;
- activations uintN, weights int8: the recipe's graph (N = 8), or the same with 16-bit
  activations, which onnxruntime's CPU runs as fp32 convolutions between Q/DQ pairs.
Gates are measured with onnxruntime's WeightBiasQuantization off (it would quantise the fp32
weights of the middle rows when the session is built). Speeds: ratio to fp32, median of
alternating rounds on quant_bench's load, sessions built as the server builds them.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from quant_bench import backbone_of, model_parser, rate, workload

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embedder.core.manifest import Manifest  # noqa: E402
from embedder.core.runtime import CPU, CPU_UNFUSED, cpu_session  # noqa: E402
from export.fidelity import calibration_feeds, embed_fp32, gate, probe_sets  # noqa: E402
from export.quantize import (  # noqa: E402
    calibration_chunks,
    fp32_ranges,
    quiet_quantiser,
    stem_int8,
    with_node_names,
)
from export.rounding import calibrated_weights, with_weights  # noqa: E402


def activations_only(qdq: Path, fp32: Path, dst: Path) -> None:
    """qdq with the fp32 graph's weights and biases in place of their DequantizeLinear."""
    model, source = onnx.load(str(qdq)), onnx.load(str(fp32)).graph
    inputs = {n.name: list(n.input) for n in source.node}
    constants = {i.name: i for i in source.initializer}
    quantised = {i.name for i in model.graph.initializer}
    dequantised = {n.output[0] for n in model.graph.node
                   if n.op_type == "DequantizeLinear" and n.input[0] in quantised}  # fmt: skip
    present, fp32_names = set(quantised), set()
    for node in model.graph.node:
        for j, name in enumerate(node.input):
            if j > 0 and name in dequantised:
                node.input[j] = inputs[node.name][j]
                fp32_names.add(node.input[j])
                if node.input[j] not in present:
                    model.graph.initializer.append(constants[node.input[j]])
                    present.add(node.input[j])
    read = {name for n in model.graph.node for name in n.input}
    nodes = [n for n in model.graph.node if n.output[0] not in dequantised
             or (n.output[0] in read and n.output[0] not in fp32_names)]  # fmt: skip
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    read = {name for n in nodes for name in n.input}
    kept = [i for i in model.graph.initializer if i.name in read]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    onnx.save(model, str(dst))


def variants(src: Path, stems: list[int], calibration, out: Path) -> dict[str, tuple[Path, bool]]:
    """name -> (file, whether a server could serve it), for every row of the table."""
    rounded = calibrated_weights(src, calibration_chunks(calibration))
    ranges = fp32_ranges(src, calibration, out)
    files = {}
    for stem in stems:
        kept = [n.name for n in onnx.load(str(src)).graph.node if n.op_type == "Conv"][:stem]
        weights = out / f"s{stem}.weights.onnx"
        with_weights(src, weights, {c: w for c, w in rounded.items() if c not in kept})
        files[f"stem {stem} | int8 | fp32"] = (weights, False)
        for bits in (8, 16):
            both, alone = out / f"s{stem}.u{bits}.onnx", out / f"s{stem}.u{bits}.alone.onnx"
            with quiet_quantiser():
                stem_int8(src, both, stem, calibration, ranges, rounded, bits)
            activations_only(both, src, alone)
            files[f"stem {stem} | fp32 | uint{bits}"] = (alone, False)
            files[f"stem {stem} | int8 | uint{bits}"] = (both, True)
    return files


def main() -> None:
    p = model_parser(__doc__, "mobilenet_v2")
    p.add_argument("--stems", default="1,6", help="leading convolutions kept fp32, e.g. 1,6")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    folder = args.repo / args.model / args.version
    manifest = Manifest.read(folder)
    backbone = backbone_of(manifest, folder)
    scratch = tempfile.TemporaryDirectory(prefix="int8_bound.")  # removed at exit
    out = Path(scratch.name)
    src = with_node_names(folder / manifest.file, out)
    stems = [int(k) for k in args.stems.split(",")]
    files = variants(src, stems, calibration_feeds(backbone), out)

    probes = probe_sets(backbone)
    embed_fp32(probes, cpu_session(src))
    faithful = [*CPU_UNFUSED, "WeightBiasQuantization"]
    gates = {name: gate(probes, ort.InferenceSession(str(f), providers=[CPU],
                                                     disabled_optimizers=faithful))
             for name, (f, _) in files.items()}  # fmt: skip

    options = ort.SessionOptions()
    options.intra_op_num_threads = len(os.sched_getaffinity(0))
    served = {"fp32": src} | {name: f for name, (f, ok) in files.items() if ok}
    sessions = {name: cpu_session(f, options) for name, f in served.items()}
    feeds = workload(manifest, folder)
    rates: dict[str, list[float]] = {name: [] for name in sessions}
    for s in sessions.values():
        rate(s, feeds[:2])  # warm
    for _ in range(args.rounds):
        for name, s in sessions.items():
            rates[name].append(rate(s, feeds))

    print(f"{args.model}: fidelity gate (cosine min, probe change, 10-NN overlap) and speed, "
          f"{len(os.sched_getaffinity(0))} cores, {args.rounds} alternating rounds")  # fmt: skip
    print("| stem | weights | activations | gate | vs fp32 |")
    print("|---|---|---|---|---|")
    for name, g in gates.items():
        speed = rates.get(name)
        ratio = f"{np.median(np.array(speed) / np.array(rates['fp32'])):.2f}" if speed else "-"
        verdict = "passed" if g["passed"] else "failed"
        print(f"| {name} | {g['cosine_min']:.4f}, {g['probe_change_points']:+.1f} pt, "
              f"{g['knn10_overlap']:.2f}: {verdict} | {ratio} |")  # fmt: skip


if __name__ == "__main__":
    main()
