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
Every graph runs in one session, built as the server builds one but with onnxruntime's
WeightBiasQuantization off as well (it would quantise the fp32 weights of the middle rows when
the session is built): its gate is measured on that session, and the rows a server could serve
are timed on that same session, against fp32's (which also gives the gate's reference), so the
speed is that of the graph gated. Speeds: ratio to fp32, the median of per-round ratios on
quant_bench's load, each round timing every graph once, the order reversed every other round.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from quant_bench import alternating, backbone_of, model_parser, rate, recipe_inputs, workload

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embedder.core.manifest import Manifest  # noqa: E402
from embedder.core.runtime import CPU, CPU_UNFUSED  # noqa: E402
from export.fidelity import embed_fp32, gate, probe_sets  # noqa: E402
from export.quantize import quiet_quantiser, stem_int8  # noqa: E402
from export.rounding import with_weights  # noqa: E402


def activations_only(qdq: Path, fp32: Path, dst: Path) -> None:
    """qdq with the fp32 graph's weights and biases in place of their DequantizeLinear (both
    graphs with the same node names: with_node_names)."""
    model, source = onnx.load(str(qdq)), onnx.load(str(fp32)).graph
    inputs = {n.name: list(n.input) for n in source.node}
    constants = {i.name: i for i in source.initializer}
    initializers = {i.name for i in model.graph.initializer}
    dequantised = {n.output[0] for n in model.graph.node
                   if n.op_type == "DequantizeLinear" and n.input[0] in initializers}  # fmt: skip
    restored = set()
    for node in model.graph.node:
        for j, name in enumerate(node.input):
            if j == 0 or name not in dequantised:
                continue
            if node.name not in inputs or inputs[node.name][j] not in constants:
                raise SystemExit(f"{node.name or node.op_type} reads a quantised constant that "
                                 f"{fp32.name} does not have under that node name; name the "
                                 "nodes of both graphs with with_node_names")  # fmt: skip
            node.input[j] = inputs[node.name][j]
            if node.input[j] not in initializers | restored:
                model.graph.initializer.append(constants[node.input[j]])
            restored.add(node.input[j])
    read = {name for n in model.graph.node for name in n.input}
    nodes = [n for n in model.graph.node if n.output[0] not in dequantised
             or (n.output[0] in read and n.output[0] not in restored)]  # fmt: skip
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    read = {name for n in nodes for name in n.input}
    produced = {name for n in nodes for name in n.output}
    for field, keep in ((model.graph.initializer, read), (model.graph.value_info, produced)):
        kept = [item for item in field if item.name in keep]
        del field[:]
        field.extend(kept)
    onnx.save(model, str(dst))


def variants(manifest: Manifest, folder: Path, stems: list[int], out: Path) -> tuple:
    """(the fp32 file with named nodes, {row: (file, whether a server could serve it)})."""
    src, calibration, rounded, ranges = recipe_inputs(manifest, folder, out)
    files = {}
    for stem in stems:
        quantised = {}
        for bits in (8, 16):
            quantised[bits] = out / f"s{stem}.u{bits}.onnx"
            with quiet_quantiser():
                kept = stem_int8(src, quantised[bits], stem, calibration, ranges, rounded,
                                 activation_bits=bits)  # fmt: skip
        weights = out / f"s{stem}.weights.onnx"
        with_weights(src, weights, {c: w for c, w in rounded.items() if c not in kept})
        files[f"stem {stem} | int8 | fp32"] = (weights, False)
        for bits, both in quantised.items():
            alone = both.with_suffix(".alone.onnx")
            activations_only(both, src, alone)
            files[f"stem {stem} | fp32 | uint{bits}"] = (alone, False)
            files[f"stem {stem} | int8 | uint{bits}"] = (both, True)
    return src, files


def measure(manifest: Manifest, folder: Path, src: Path, files: dict, rounds: int) -> tuple:
    """Each file's gate, and the servable ones' rates (items/s per round) with fp32's, timed on
    the sessions their gates were measured on."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = len(os.sched_getaffinity(0))
    # sessions that run each graph as written: WeightBiasQuantization would quantise the fp32
    # weights that activations_only puts back, per tensor (README)
    faithful = [*CPU_UNFUSED, "WeightBiasQuantization"]

    def session(path: Path):
        return ort.InferenceSession(str(path), options, providers=[CPU],
                                    disabled_optimizers=faithful)  # fmt: skip

    probes = probe_sets(backbone_of(manifest, folder))
    sessions = {"fp32": session(src)} | {name: session(f) for name, (f, _) in files.items()}
    embed_fp32(probes, sessions["fp32"])
    gates = {name: gate(probes, sessions[name]) for name in files}
    timed = ["fp32", *(name for name, (_, servable) in files.items() if servable)]
    feeds = workload(manifest, folder)
    for name in timed:
        rate(sessions[name], feeds[:2])  # warm
    rates: dict[str, list[float]] = {name: [] for name in timed}
    for r in range(rounds):
        for name in alternating(timed, r):
            rates[name].append(rate(sessions[name], feeds))
    return gates, rates


def main() -> None:
    p = model_parser(__doc__, "mobilenet_v2")
    p.add_argument("--stems", default="1,6", help="leading convolutions kept fp32, e.g. 1,6")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    folder = args.repo / args.model / args.version
    manifest = Manifest.read(folder)
    with tempfile.TemporaryDirectory(prefix="int8_bound.") as tmp:
        stems = [int(k) for k in args.stems.split(",")]
        src, files = variants(manifest, folder, stems, Path(tmp))
        gates, rates = measure(manifest, folder, src, files, args.rounds)

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
