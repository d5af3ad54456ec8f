"""int8 recipes for CPUs, each returning how the file was made (recorded in the manifest).

Text encoders (graphs of MatMuls): dynamic quantisation of the weight MatMuls only, int8 per
output channel; the activation-by-activation MatMuls of attention stay fp32 (quantising them
cost MiniLM cosine 0.985 -> 0.990 on the BBC probe for no speed). Then a measured sensitivity
pass: the MatMuls fed by an activation function (the FFN's down projections, whose inputs have
the widest ranges) are each tried in fp32 alone, on calibration texts the fidelity gate never
sees, and the ones that help most stay fp32, one at a time, until the calibration cosine
reaches CALIBRATION_COSINE or MAX_FP32 of them are kept.

Convolutional graphs (most weights in Convs): static QDQ quantisation, int8 weights per output
channel and uint8 activations per tensor, ranges from a percentile calibration on photo crops.
Then a measured sensitivity pass over the stem: the first STEM_CANDIDATES convolutions are kept
in fp32 in turn, and the shortest stem within STEM_TOLERANCE of the best calibration cosine is
taken. On MobileNetV2 the stem is where int8 hurts most (cosine min on the calibration crops
0.43 with none kept, 0.93 with five); the rest of the loss is spread over every layer: keeping
41 of its 52 convolutions, or the residual adds and projections, in fp32 reached 0.955-0.966 on
the gate's probes, so per-tensor uint8 activations cannot pass its 0.99 (README).
"""

from __future__ import annotations

import io
import logging
import tempfile
from collections.abc import Callable
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import numpy as np
import onnx

from .errors import ExportError
from .fidelity import cosine_rows, embed

CALIBRATION_COSINE = 0.993  # on calibration texts: margin over the gate's 0.99 on its own set
MAX_FP32 = 2  # each kept MatMul costs speed (all six of MiniLM's: 1.9x -> 1.6x)
STEM_CANDIDATES = (0, 3, 5, 8)  # leading convolutions kept in fp32, tried in turn
STEM_TOLERANCE = 0.03  # a longer stem must gain more: MobileNetV2's 5 -> 8 gained 0.026 for
# 13 % of the speed (1.76x -> 1.53x fp32)
ACTIVATIONS = {"Mul", "Gelu", "FastGelu", "Relu", "Tanh", "Sigmoid", "Erf"}


@contextmanager
def _quiet_quantiser():
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


def make_int8(src: Path, dst: Path, calibration: list[dict[str, np.ndarray]]) -> dict:
    """Writes dst; returns the recipe (scheme, nodes kept fp32, calibration cosine)."""
    graph = onnx.load(str(src), load_external_data=False).graph
    if is_convolutional(graph):
        return _conv_recipe(src, dst, graph, calibration)
    weights, candidates = weight_matmuls(graph)
    score = _scorer(src, dst, calibration, _dynamic_int8)

    def quantised(keep: list[str]) -> float:
        return score([w for w in weights if w not in keep])

    keep: list[str] = []
    cosine = quantised(keep)
    if cosine < CALIBRATION_COSINE and calibration:
        alone = {c: quantised([c]) for c in candidates}  # the measured sensitivity
        for name in sorted(candidates, key=alone.__getitem__, reverse=True)[:MAX_FP32]:
            keep.append(name)
            cosine = quantised(keep)
            if cosine >= CALIBRATION_COSINE:
                break
    return {
        "scheme": "dynamic, int8 weights per channel, weight MatMuls only",
        "kept_fp32": keep,
        "calibration_cosine_min": cosine,
        "calibration_items": sum(len(next(iter(f.values()))) for f in calibration),
    }


def _conv_recipe(src: Path, dst: Path, graph: onnx.GraphProto, calibration: Feeds) -> dict:
    if not calibration:
        raise ExportError("static int8 of a convolutional graph needs calibration inputs; "
                          "pass the feeds of fidelity.calibration_feeds(backbone)")  # fmt: skip
    convs = [n.name for n in graph.node if n.op_type == "Conv"]  # in graph (topological) order
    with tempfile.TemporaryDirectory(prefix="calibration.") as tmp:
        ranges = Path(tmp) / "ranges.json"  # calibrated once, then reused by every candidate

        def quantise(s: Path, d: Path, kept: list[str]) -> None:
            _static(s, d, kept, calibration, ranges)

        score = _scorer(src, dst, calibration, quantise)
        sweep = {k: score(convs[:k]) for k in STEM_CANDIDATES if k < len(convs)}
        best = max(sweep.values())
        stem = min(k for k, cosine in sweep.items() if cosine >= best - STEM_TOLERANCE)
        if stem != max(sweep):  # dst holds the last one tried
            score(convs[:stem])
    return {
        "scheme": "static QDQ, int8 weights per channel, uint8 activations per tensor "
        "(percentile calibration)",
        "kept_fp32": convs[:stem],
        "calibration_cosine_min": sweep[stem],
        "calibration_items": sum(len(next(iter(f.values()))) for f in calibration),
        "stem_sweep": {str(k): round(v, 6) for k, v in sweep.items()},
    }


Feeds = list[dict[str, np.ndarray]]
Quantiser = Callable[[Path, Path, list[str]], None]


def _scorer(src: Path, dst: Path, calibration: Feeds,
            quantise: Quantiser) -> Callable[[list[str]], float]:  # fmt: skip
    """A function that quantises into dst (with `nodes`) and returns its cosine min on the
    calibration inputs (nan without them)."""
    import onnxruntime as ort

    reference = None
    if calibration:
        fp32 = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
        reference = embed(fp32, calibration)

    def score(nodes: list[str]) -> float:
        with _quiet_quantiser():
            quantise(src, dst, nodes)
        if reference is None:
            return float("nan")
        session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
        return float(cosine_rows(embed(session, calibration), reference).min())

    return score


def _dynamic_int8(src: Path, dst: Path, nodes: list[str]) -> None:
    """Dynamic quantisation of `nodes` (an empty list would quantise every MatMul)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                     nodes_to_quantize=nodes or None)  # fmt: skip


def _static(src: Path, dst: Path, kept_fp32: list[str], calibration: Feeds, ranges: Path) -> None:
    from onnxruntime import quantization as q

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self):
            return next(self.batches, None)

    q.quantize_static(str(src), str(dst), Reader(), quant_format=q.QuantFormat.QDQ,
                      per_channel=True, activation_type=q.QuantType.QUInt8,
                      weight_type=q.QuantType.QInt8, nodes_to_exclude=kept_fp32,
                      calibrate_method=q.CalibrationMethod.Percentile,
                      calibration_cache_path=ranges)  # fmt: skip
