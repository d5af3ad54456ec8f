"""Reduced-precision variants: fp16 for GPUs, int8 for CPUs (recipes in quantize.py).

Each is measured against fp32 on the sample inputs; the cosine similarity goes into the
manifest so a user can judge whether the variant is good enough for their task.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from embedder.core.manifest import Variant, sha256_file
from embedder.core.runtime import cpu_session
from embedder.core.vectors import cosine_rows

from .errors import ExportError
from .fidelity import gate
from .quantize import make_int8

VARIANTS = ("fp16", "int8")


def resize_size_nodes(graph: onnx.GraphProto) -> list[str]:
    """Nodes that compute a Resize's scales/sizes: in fp16 they round to wrong sizes."""
    producer = {out: node for node in graph.node for out in node.output}
    pending = [name for n in graph.node if n.op_type == "Resize" for name in n.input[1:] if name]
    blocked: set[str] = set()
    while pending:
        node = producer.get(pending.pop())
        if node is not None and node.name not in blocked:
            blocked.add(node.name)
            pending.extend(node.input)
    return sorted(blocked)


def depthwise_convs(graph: onnx.GraphProto) -> list[str]:
    """Grouped convolutions: with a handful of weights per channel (batch norm folded in),
    their fp16 rounding costs the most. Kept in fp32, MobileNetV2's cosine to fp32 on 32
    photo crops went from 0.99982 to 0.99998."""
    return [n.name for n in graph.node if n.op_type == "Conv"
            and any(a.name == "group" and a.i > 1 for a in n.attribute)]  # fmt: skip


def fp16_model(model: onnx.ModelProto, ops_fp32: tuple[str, ...] = (),
               nodes_fp32: tuple[str, ...] = ()) -> onnx.ModelProto:  # fmt: skip
    """`model` in fp16 with fp32 inputs and outputs; onnxruntime's default block list, Resize
    and the nodes computing its sizes stay fp32, and so do `ops_fp32` and `nodes_fp32`."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    return convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=[*DEFAULT_OP_BLOCK_LIST, "Resize", *ops_fp32],
        node_block_list=[*resize_size_nodes(model.graph), *nodes_fp32],
    )


def make_fp16(src: Path, dst: Path) -> None:
    """The served fp16 variant: depthwise convolutions kept fp32."""
    model = onnx.load(str(src))
    onnx.save(fp16_model(model, nodes_fp32=tuple(depthwise_convs(model.graph))), str(dst))


def build_variant(kind: str, folder: Path, inputs: dict[str, np.ndarray], fp32: np.ndarray,
                  probes: list | None = None,
                  calibration: list | None = None) -> Variant:  # fmt: skip
    """The variant's file, its cosine to fp32 on the sample inputs and, given probe sets
    (export/fidelity.py), its fidelity gate; int8 makes its choices on `calibration`."""
    if kind not in VARIANTS:
        raise ExportError(f"unknown variant {kind!r}; choose from {', '.join(VARIANTS)}")
    src, dst = folder / "model.onnx", folder / f"model.{kind}.onnx"
    if kind == "fp16":
        make_fp16(src, dst)
        recipe = {"scheme": "fp16 weights and activations; depthwise convolutions fp32"}
    else:
        recipe = make_int8(src, dst, calibration or [], probes)
    session = cpu_session(dst)
    out = session.run(["features"], inputs)[0]
    cos = cosine_rows(out, fp32)
    return Variant(
        file=dst.name,
        sha256=sha256_file(dst),
        precision=kind,
        cosine_to_fp32_min=float(cos.min()),
        cosine_to_fp32_mean=float(cos.mean()),
        intended_for="CUDA" if kind == "fp16" else "CPU",
        gate=gate(probes, session) if probes else {},
        recipe=recipe,
    )
