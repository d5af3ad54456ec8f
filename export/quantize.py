"""int8 recipes for CPUs, each returning how the file was made (recorded in the manifest).

Text encoders (graphs of MatMuls): dynamic quantisation of the weight MatMuls only, int8 per
output channel; the activation-by-activation MatMuls of attention stay fp32 (quantising them
cost MiniLM cosine 0.985 -> 0.990 on the BBC probe for no speed). Then a measured sensitivity
pass: the MatMuls fed by an activation function (the FFN's down projections, whose inputs have
the widest ranges) are each tried in fp32 alone, on calibration texts the fidelity gate never
sees, and the ones that help most stay fp32, one at a time, until the calibration cosine
reaches CALIBRATION_COSINE or MAX_FP32 of them are kept.

Graphs with convolutions: dynamic quantisation with uint8 weights (onnxruntime's CPU
ConvInteger has no int8-weight kernel); it fails the fidelity gate on the CNNs measured so far.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx

from .fidelity import cosine_rows, embed

CALIBRATION_COSINE = 0.993  # on calibration texts: margin over the gate's 0.99 on its own set
MAX_FP32 = 2  # each kept MatMul costs speed (all six of MiniLM's: 1.9x -> 1.6x)
ACTIVATIONS = {"Mul", "Gelu", "FastGelu", "Relu", "Tanh", "Sigmoid", "Erf"}


@contextmanager
def _quiet_quantiser():
    """onnxruntime's quantiser logs advice at WARNING on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
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


def make_int8(src: Path, dst: Path, calibration: list[dict[str, np.ndarray]]) -> dict:
    """Writes dst; returns the recipe (scheme, nodes kept fp32, calibration cosine)."""
    graph = onnx.load(str(src), load_external_data=False).graph
    if any(n.op_type == "Conv" for n in graph.node):
        with _quiet_quantiser():
            _dynamic(src, dst, None, weight_type="uint8")
        return {"scheme": "dynamic, uint8 weights per channel, every Conv and MatMul"}
    weights, candidates = weight_matmuls(graph)
    score = _text_recipe(src, dst, calibration)

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


Feeds = list[dict[str, np.ndarray]]


def _text_recipe(src: Path, dst: Path,
                 calibration: Feeds) -> Callable[[list[str]], float]:  # fmt: skip
    """A function that quantises `nodes` into dst and returns its cosine min on calibration."""
    import onnxruntime as ort

    reference = None
    if calibration:
        fp32 = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
        reference = embed(fp32, calibration)

    def score(nodes: list[str]) -> float:
        with _quiet_quantiser():  # (an empty list would quantise every MatMul)
            _dynamic(src, dst, nodes or None, weight_type="int8")
        if reference is None:
            return float("nan")
        session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
        return float(cosine_rows(embed(session, calibration), reference).min())

    return score


def _dynamic(src: Path, dst: Path, nodes: list[str] | None, weight_type: str) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    kind = QuantType.QInt8 if weight_type == "int8" else QuantType.QUInt8
    quantize_dynamic(str(src), str(dst), weight_type=kind, per_channel=True,
                     nodes_to_quantize=nodes)  # fmt: skip
