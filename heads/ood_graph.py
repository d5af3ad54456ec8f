"""An OOD scorer (ood.py) as an ONNX graph: (N, dim) `features` in, (N,) `ood_score` out, the
same matrix products as `ood.score`, so a published model carries its head's score and no door
does model math."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .ood import OODScorer


def ood_graph(scorer: OODScorer, dim: int, opset: int, ir_version: int) -> onnx.ModelProto:
    nodes, inits = (_knn if scorer.kind == "knn" else _mahalanobis)(scorer, opset)
    features = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", dim])
    out = helper.make_tensor_value_info("ood_score", TensorProto.FLOAT, ["batch"])
    graph = helper.make_graph(nodes, "ood", [features], [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    onnx.checker.check_model(model)
    return model


def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _reduce(op: str, src: str, dst: str, opset: int, keepdims: int) -> onnx.NodeProto:
    """ReduceSum / ReduceMin over axis 1 (axes an input from opset 18 on, 13 for ReduceSum)."""
    if opset >= 18 or (op == "ReduceSum" and opset >= 13):
        return helper.make_node(op, [src, "axis1"], [dst], keepdims=keepdims)
    return helper.make_node(op, [src], [dst], axes=[1], keepdims=keepdims)


def _mahalanobis(scorer: OODScorer, opset: int):
    """min over classes of |xW - m_cW|^2 = |xW|^2 - 2 xW.(m_cW) + |m_cW|^2."""
    w = scorer.arrays["whitening"].astype(np.float32)
    m = (scorer.arrays["means"] @ w).astype(np.float32)
    inits = [
        _const("whitening", w),
        _const("means_t", m.T.copy()),
        _const("means_sq", (m * m).sum(1)),
        _const("two", np.float32(2)),
        _const("axis1", np.array([1], np.int64)),
    ]
    nodes = [
        helper.make_node("MatMul", ["features", "whitening"], ["z"]),
        helper.make_node("Mul", ["z", "z"], ["z_sq"]),
        _reduce("ReduceSum", "z_sq", "z_norm", opset, keepdims=1),
        helper.make_node("MatMul", ["z", "means_t"], ["z_dot_m"]),
        helper.make_node("Mul", ["z_dot_m", "two"], ["cross"]),
        helper.make_node("Sub", ["z_norm", "cross"], ["part"]),
        helper.make_node("Add", ["part", "means_sq"], ["distances"]),
        _reduce("ReduceMin", "distances", "ood_score", opset, keepdims=0),
    ]
    return nodes, inits


def _knn(scorer: OODScorer, opset: int):
    """1 - the k-th largest cosine similarity to the bank."""
    bank = scorer.arrays["bank"].astype(np.float32)
    k = min(scorer.k, len(bank))
    inits = [
        _const("bank_t", bank.T.copy()),
        _const("k", np.array([k], np.int64)),
        _const("last", np.array(k - 1, np.int64)),
        _const("one", np.float32(1)),
        _const("tiny", np.float32(1e-12)),
        _const("axis1", np.array([1], np.int64)),
    ]
    nodes = [
        helper.make_node("Mul", ["features", "features"], ["x_sq"]),
        _reduce("ReduceSum", "x_sq", "x_norm_sq", opset, keepdims=1),
        helper.make_node("Sqrt", ["x_norm_sq"], ["x_norm"]),
        helper.make_node("Max", ["x_norm", "tiny"], ["x_safe"]),
        helper.make_node("Div", ["features", "x_safe"], ["unit"]),
        helper.make_node("MatMul", ["unit", "bank_t"], ["similarity"]),
        helper.make_node("TopK", ["similarity", "k"], ["nearest", "nearest_index"], axis=1),
        helper.make_node("Gather", ["nearest", "last"], ["kth"], axis=1),
        helper.make_node("Sub", ["one", "kth"], ["ood_score"]),
    ]
    return nodes, inits
