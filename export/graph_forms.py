"""Exported graphs rewritten into the forms onnxruntime's graph fusions recognise.

torch's dynamo exporter writes the exact (erf) GELU as `x * (0.5 * (1 + erf(x / sqrt 2)))`.
onnxruntime's GeluFusion matches `(x * (1 + erf(x / sqrt 2))) * 0.5` and misses the other
grouping, so each activation ran as five ops (Div, Erf, Add, Mul, Mul) instead of one
BiasGelu that also takes the bias of the MatMul before it: regrouped, MiniLM ran 3 % faster
in fp32 and 12 % in int8 (README, "The graph form"). `regroup_gelu` swaps the two
multiplications: the same ops on the same values, equal up to float rounding, and the
export's parity check runs after it as on any graph. Files exported before it keep the old
grouping until they are exported again.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

log = logging.getLogger(__name__)


def _scalar_constants(graph: onnx.GraphProto) -> dict[str, float]:
    """The graph's one-element initialisers and Constant nodes, by name."""
    found = {i.name: i for i in graph.initializer if int(np.prod(i.dims)) == 1}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            if int(np.prod(node.attribute[0].t.dims)) == 1:
                found[node.output[0]] = node.attribute[0].t
    return {name: float(numpy_helper.to_array(t).reshape(())) for name, t in found.items()}


def _other_input(node: onnx.NodeProto, name: str) -> str | None:
    """The input of a two-input node that is not `name`; None when `name` is not one of them."""
    if len(node.input) != 2 or name not in node.input:
        return None
    return node.input[1] if node.input[0] == name else node.input[0]


def _read_outside_nodes(graph: onnx.GraphProto) -> set[str]:
    """Names that something other than a node of `graph` reads: the graph's outputs and the
    inputs of nodes in its subgraphs (If, Loop, Scan bodies), at any depth."""
    names = {o.name for o in graph.output}
    for node in graph.node:
        for attribute in node.attribute:
            for body in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                names |= {i for n in body.node for i in n.input} | _read_outside_nodes(body)
    return names


def regroup_gelu(graph: onnx.GraphProto) -> int:
    """Rewrite every `x * (0.5 * (1 + erf(x / sqrt 2)))` as `(x * (1 + erf(x / sqrt 2))) * 0.5`
    in place; returns how many were rewritten. Other forms, and GELUs whose intermediate
    values anything else reads, are left alone."""
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    constants, read_elsewhere = _scalar_constants(graph), _read_outside_nodes(graph)

    def is_constant(name: str | None, value: float) -> bool:
        return name in constants and math.isclose(constants[name], value, rel_tol=1e-6)

    def sole_user(name: str, op_type: str) -> onnx.NodeProto | None:
        users = consumers.get(name, [])
        if len(users) != 1 or users[0].op_type != op_type or name in read_elsewhere:
            return None
        return users[0]

    rewritten = 0
    for erf in [n for n in graph.node if n.op_type == "Erf"]:
        div = producers.get(erf.input[0])
        if div is None or div.op_type != "Div" or not is_constant(div.input[1], math.sqrt(2)):
            continue
        x = div.input[0]
        add = sole_user(erf.output[0], "Add")
        if add is None or not is_constant(_other_input(add, erf.output[0]), 1.0):
            continue
        half = sole_user(add.output[0], "Mul")
        if half is None or not is_constant(half_constant := _other_input(half, add.output[0]), 0.5):
            continue
        outer = sole_user(half.output[0], "Mul")  # `half`'s value changes: no other reader
        if outer is None or _other_input(outer, half.output[0]) != x:
            continue
        half.input[:] = [x, add.output[0]]  # x * (1 + erf): a producer earlier in the order
        outer.input[:] = [half.output[0], half_constant]  # ... * 0.5, defined before `half`
        rewritten += 1
    return rewritten


def regroup_gelu_file(path: Path) -> int:
    """`regroup_gelu` on an ONNX file, saved in place when anything changed."""
    model = onnx.load(str(path))
    rewritten = regroup_gelu(model.graph)
    log.debug("%s: %d GELU regrouped into the form onnxruntime fuses", path.name, rewritten)
    if rewritten:
        onnx.save(model, str(path))
    return rewritten
