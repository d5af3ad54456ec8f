"""int8 recipes for CPUs, each returning how the file was made (recorded in the manifest).

Transformer encoders, text or ViT (graphs with most weights in MatMuls): dynamic quantisation
of the weight MatMuls only, int8 per output channel; the activation-by-activation MatMuls of
attention stay fp32 (quantising them cost MiniLM cosine 0.985 -> 0.990 on the BBC probe for no
speed). Then a measured sensitivity pass: the MatMuls fed by an activation function (the FFN's
down projections, whose inputs have the widest ranges) are each tried in fp32 alone, on
calibration inputs the fidelity gate never sees, and the ones that help most stay fp32, one at
a time, until the calibration cosine reaches CALIBRATION_COSINE or MAX_FP32 of them are kept.
On DINOv2 (calibrated on photo crops) it keeps two: 1.80x fp32 at gate cosine 0.983, where
dynamic uint8 of every Conv and MatMul read 1.35x at 0.972; neither passes (README).

Convolutional graphs (most weights in Convs): static QDQ quantisation, int8 weights per output
channel, their rounding chosen on the calibration inputs (rounding.py), and uint8 activations
per tensor, ranges from a percentile calibration on photo crops. Then a measured sensitivity
pass over the stem: the first STEM_CANDIDATES convolutions are kept in fp32 in turn (each
candidate written to its own file), each scored on the calibration crops and, given probe
sets, by the fidelity gate. The shortest stem that passes the gate is taken; when none does,
the shortest whose calibration score reaches CALIBRATION_COSINE, else the shortest within
STEM_TOLERANCE of the best. EfficientNet-Lite0 keeps three and passes its gate at cosine min
0.9917, a thin margin (README). MobileNetV2 fails with every stem: its weights pass once
rounded (0.996 with fp32 activations), its per-tensor uint8 activations do not.
"""

from __future__ import annotations

import io
import logging
import shutil
import tempfile
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import numpy as np
import onnx

from embedder.core.runtime import cpu_session
from embedder.core.vectors import cosine_rows

from .errors import ExportError
from .fidelity import embed, gate, items_in
from .rounding import calibrated_weights, with_weights

CALIBRATION_COSINE = 0.993  # on calibration inputs: a margin over the gate's 0.99 on its probes
# (it holds for MiniLM; for CNNs it is only the fallback without a gate, and with calibrated
# rounding it takes EfficientNet-Lite0's stem 1, which reads 0.982 on the gate)
MAX_FP32 = 2  # each kept MatMul costs speed (all six of MiniLM's: 1.9x -> 1.6x)
STEM_CANDIDATES = (1, 3, 6, 9)  # leading convolutions kept in fp32, tried in turn: the first
# convolution reads raw pixels (int8 gains nothing there), and in MobileNetV2 and EfficientNet
# the others end a block, where the tensor that crosses to int8 is narrowest
STEM_PERCENTILE = 5  # a stem is scored by this percentile of its calibration cosines: the crops
# hold deliberate extremes, and their minimum is one crop. With rounding chosen on them the
# scores of EfficientNet-Lite0's stems 3, 6 and 9 lie within 0.001 (0.9977-0.9985) where the
# gate reads 0.9917, 0.9752 (failed) and 0.9964: the gate decides when there is one.
STEM_TOLERANCE = 0.01  # when no stem reaches CALIBRATION_COSINE, a longer one must gain more
# than this: MobileNetV2's 3 -> 6 gained 0.057 for 14 % of the speed (1.99x -> 1.71x fp32),
# 6 -> 9 lost 0.0015
ACTIVATIONS = {"Mul", "Gelu", "FastGelu", "Relu", "Tanh", "Sigmoid", "Erf"}
Feeds = list[dict[str, np.ndarray]]  # batches of named inputs
CALIBRATION_CHUNK = 8  # inputs whose intermediate tensors the calibration holds at once (all 96
# at once took the demo's peak memory from 2.3 GB to 7.6 GB)


@contextmanager
def quiet_quantiser():
    """onnxruntime's quantiser logs advice at WARNING on the root logger, and its percentile
    calibration prints its progress."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def weight_matmuls(graph: onnx.GraphProto) -> tuple[list[str], list[str]]:
    """(every MatMul with a constant weight, those of them fed by an activation function)."""
    constants = {i.name for i in graph.initializer}
    producer = {out: node.op_type for node in graph.node for out in node.output}
    weights = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in constants]
    fed = [n.name for n in weights if producer.get(n.input[0]) in ACTIVATIONS]
    return [n.name for n in weights], fed


def is_convolutional(graph: onnx.GraphProto) -> bool:
    """Most of the weights are in Convs (a ViT's patch embedding alone does not count)."""
    sizes = {i.name: int(np.prod(i.dims)) for i in graph.initializer}
    in_ops = {"Conv": 0, "MatMul": 0, "Gemm": 0}
    for n in graph.node:
        if n.op_type in in_ops and len(n.input) > 1:
            in_ops[n.op_type] += sizes.get(n.input[1], 0)
    return in_ops["Conv"] > in_ops["MatMul"] + in_ops["Gemm"]


def make_int8(src: Path, dst: Path, calibration: Feeds, probes: list | None = None) -> dict:
    """Writes dst; returns the recipe (scheme, nodes kept fp32, calibration cosine). Given
    probe sets with their fp32 figures (fidelity.embed_fp32), the fidelity gate chooses among
    a CNN's stems."""
    if not calibration:
        raise ExportError("int8 needs calibration inputs for its choices; pass the feeds of "
                          "fidelity.calibration_feeds(backbone)")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="int8.") as tmp:
        src = with_node_names(src, Path(tmp))
        graph = onnx.load(str(src), load_external_data=False).graph
        if is_convolutional(graph):
            return _conv_recipe(src, dst, graph, calibration, probes or [], Path(tmp))
        return _matmul_recipe(src, dst, graph, calibration)


def _matmul_recipe(src: Path, dst: Path, graph: onnx.GraphProto, calibration: Feeds) -> dict:
    weights, fed = weight_matmuls(graph)
    if not weights:
        raise ExportError(f"{src.name} has no MatMul with a constant weight, so its int8 recipe "
                          "has nothing to quantise (Gemm layers are not quantised); export it "
                          "without the int8 variant")  # fmt: skip
    candidates = fed if len(weights) > 1 else []  # at least one MatMul stays int8
    reference = _reference(src, calibration)

    def quantised(keep: list[str]) -> float:  # writes dst
        with quiet_quantiser():
            _dynamic_int8(src, dst, [w for w in weights if w not in keep])
        return float(_cosines(cpu_session(dst), calibration, reference).min())

    keep: list[str] = []
    cosine = quantised(keep)
    if cosine < CALIBRATION_COSINE:
        alone = {c: quantised([c]) for c in candidates}  # the measured sensitivity
        most = min(MAX_FP32, len(weights) - 1)
        for name in sorted(candidates, key=alone.__getitem__, reverse=True)[:most]:
            keep.append(name)
            cosine = quantised(keep)  # dst holds the last one tried: this one
            if cosine >= CALIBRATION_COSINE:
                break
    return {
        "scheme": "dynamic, int8 weights per channel, weight MatMuls only",
        "kept_fp32": keep,
        "calibration_cosine_min": cosine,
        "calibration_items": items_in(calibration),
    }


def _conv_recipe(src: Path, dst: Path, graph: onnx.GraphProto, calibration: Feeds,
                 probes: list, tmp: Path) -> dict:  # fmt: skip
    reference = _reference(src, calibration)
    convs = sum(n.op_type == "Conv" for n in graph.node)
    rounded = calibrated_weights(src, calibration_chunks(calibration))
    ranges = fp32_ranges(src, calibration, tmp)
    files, kept, sweep, minimum, passed = {}, {}, {}, {}, {}
    for k in sorted(k for k in STEM_CANDIDATES if k < convs):  # shortest first
        files[k] = tmp / f"stem{k}.onnx"
        with quiet_quantiser():
            kept[k] = stem_int8(src, files[k], k, calibration, ranges, rounded)
        session = cpu_session(files[k])
        cosines = _cosines(session, calibration, reference)
        sweep[k] = round(float(np.percentile(cosines, STEM_PERCENTILE)), 6)
        minimum[k] = float(cosines.min())
        if probes:
            passed[k] = gate(probes, session)["passed"]
            if passed[k]:  # the shortest that passes is the choice: no need to try longer
                break
    stem = choose_stem(sweep, passed)
    shutil.move(files[stem], dst)
    return {
        "scheme": "static QDQ, int8 weights per channel, uint8 activations per tensor "
        "(percentile calibration)",
        "rounding": f"calibrated for {len(set(rounded) - set(kept[stem]))} of the "
        f"{convs - stem} quantised convolutions, nearest for the rest",
        "kept_fp32": kept[stem],  # names as in the int8 file (given to unnamed nodes there)
        "calibration_cosine_min": minimum[stem],
        f"calibration_cosine_p{STEM_PERCENTILE}": sweep[stem],
        "calibration_items": items_in(calibration),
        "stem_sweep": {str(k): v for k, v in sweep.items()},
        "stem_gate_passed": {str(k): v for k, v in passed.items()},
        "stem_chosen_by": "fidelity gate" if passed.get(stem) else "calibration",
    }


def choose_stem(sweep: dict[int, float], passed: dict[int, bool] | None = None) -> int:
    """The shortest stem that passed the fidelity gate; when none did, the shortest whose
    calibration score reaches CALIBRATION_COSINE, else the shortest within STEM_TOLERANCE of
    the best score."""
    if not sweep:
        raise ExportError(f"no stem length of {STEM_CANDIDATES} fits the graph's convolutions")
    if any((passed or {}).values()):
        return min(k for k, ok in passed.items() if ok)
    reaching = [k for k, score in sweep.items() if score >= CALIBRATION_COSINE]
    best = max(sweep.values())
    return min(reaching or [k for k, score in sweep.items() if score >= best - STEM_TOLERANCE])


def stem_int8(src: Path, dst: Path, stem: int, calibration: Feeds, ranges: Path,
              rounded: dict | None = None, activation_bits: int = 8) -> list[str]:  # fmt: skip
    """Static int8 of a convolutional graph with its first `stem` convolutions (in graph
    order) kept fp32 and the others' weights as `rounded` chose them
    (rounding.calibrated_weights; nearest without it), activations as static_int8 takes
    them; returns the names kept."""
    graph = onnx.load(str(src), load_external_data=False).graph
    if not is_convolutional(graph):
        raise ExportError(f"{src.name} keeps most of its weights outside convolutions; "
                          "quantise it with make_int8, which picks its recipe")  # fmt: skip
    kept = [n.name for n in graph.node if n.op_type == "Conv"][:stem]
    if not all(kept):
        raise ExportError(f"{src.name} has unnamed Conv nodes, which cannot be kept fp32 by "
                          "name; name them first with with_node_names")  # fmt: skip
    if rounded:
        source = dst.with_suffix(".rounded.onnx")
        with_weights(src, source, {c: w for c, w in rounded.items() if c not in kept})
        static_int8(source, dst, kept, calibration, ranges, activation_bits)
        source.unlink()
    else:
        static_int8(src, dst, kept, calibration, ranges, activation_bits)
    return kept


def with_node_names(src: Path, tmp: Path) -> Path:
    """src, or a copy of it under tmp in which every node has a name (recipes keep nodes in
    fp32 by name)."""
    if all(n.name for n in onnx.load(str(src), load_external_data=False).graph.node):
        return src
    model = onnx.load(str(src))
    taken = {n.name for n in model.graph.node}
    for i, node in enumerate(n for n in model.graph.node if not n.name):
        name = f"{node.op_type}_{i}"
        while name in taken:
            name += "_"
        node.name = name
        taken.add(name)
    named = tmp / src.name
    onnx.save(model, str(named))
    return named


def _reference(src: Path, calibration: Feeds) -> np.ndarray:
    return embed(cpu_session(src), calibration)


def _cosines(session, calibration: Feeds, reference: np.ndarray) -> np.ndarray:
    """The session's cosine to fp32 on each calibration input."""
    cosines = cosine_rows(embed(session, calibration), reference)
    if not np.isfinite(cosines).all():
        raise ExportError(f"the int8 graph gives non-finite features on calibration inputs "
                          f"({int((~np.isfinite(cosines)).sum())} of {len(cosines)}); export "
                          "without the int8 variant")  # fmt: skip
    return cosines


def _dynamic_int8(src: Path, dst: Path, nodes: list[str]) -> None:
    """Dynamic quantisation of `nodes`, int8 weights per output channel."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if not nodes:  # onnxruntime reads an empty list as "every MatMul"
        raise ExportError("dynamic int8 was asked to quantise no node; keep fewer in fp32")
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                     nodes_to_quantize=nodes)  # fmt: skip


def fp32_ranges(src: Path, calibration: Feeds, tmp: Path) -> Path:
    """The activation ranges of the fp32 graph on the calibration inputs, cached in a file
    every candidate reuses. Calibrated on a candidate instead (its rounded weights), the
    ranges move enough to swing EfficientNet-Lite0's worst gate item by up to 0.02 (README)."""
    ranges = tmp / "ranges.json"
    with quiet_quantiser():
        static_int8(src, tmp / "ranges.onnx", [], calibration, ranges)
    (tmp / "ranges.onnx").unlink()
    return ranges


def calibration_chunks(calibration: Feeds) -> Feeds:
    """The calibration batches cut into CALIBRATION_CHUNK inputs each."""
    step = CALIBRATION_CHUNK
    return [{k: v[i : i + step] for k, v in feeds.items()}
            for feeds in calibration for i in range(0, items_in([feeds]), step)]  # fmt: skip


def static_int8(src: Path, dst: Path, kept_fp32: list[str], calibration: Feeds,
                ranges: Path, activation_bits: int = 8) -> None:  # fmt: skip
    """Static QDQ int8 of every node but `kept_fp32`; the calibrated ranges are cached in
    `ranges` (computed when it does not exist yet). `activation_bits=16` gives uint16
    activations (the quantiser raises the graph to opset 21 for them), to measure what 8
    bits cost: onnxruntime's CPU has no 16-bit integer convolution, so such a graph runs its
    convolutions in fp32 between Q/DQ pairs, slower than fp32 (bench/int8_bound.py)."""
    from onnxruntime import quantization as q

    if activation_bits not in (8, 16):
        raise ExportError(f"activations are quantised to 8 or 16 bits, not {activation_bits}")
    wide = activation_bits == 16

    chunks = calibration_chunks(calibration)

    class Reader(q.CalibrationDataReader):
        """The chunks, handed out a range at a time: onnxruntime's calibrator keeps every
        intermediate tensor of a range, adds them to its histograms, then lets them go."""

        def __init__(self):
            self.batches = iter(chunks)

        def __len__(self):
            return len(chunks)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.batches = iter(chunks[start_index:end_index])

        def get_next(self):
            return next(self.batches, None)

    q.quantize_static(str(src), str(dst), Reader(), quant_format=q.QuantFormat.QDQ,
                      per_channel=True, weight_type=q.QuantType.QInt8,
                      activation_type=q.QuantType.QUInt16 if wide else q.QuantType.QUInt8,
                      nodes_to_exclude=kept_fp32,
                      calibrate_method=q.CalibrationMethod.Percentile,
                      calibration_cache_path=ranges,
                      extra_options={"CalibStridedMinMax": 1})  # fmt: skip
