"""GELU regrouped into the form onnxruntime fuses, checked on the graph onnxruntime runs."""

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tiny_models import optimized_op_types

from embedder.core.runtime import cpu_session
from export.graph_forms import regroup_gelu, regroup_gelu_file


def dynamo_gelu_model(half: float = 0.5, erf_users: int = 1) -> onnx.ModelProto:
    """x @ W + b, then GELU grouped as torch's dynamo exporter writes it:
    (x * (0.5 * (1 + erf(x / sqrt 2)))); `erf_users` 2 adds a second reader of erf's output."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(8, 16)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.normal(size=16).astype(np.float32), "b"),
        numpy_helper.from_array(np.array(math.sqrt(2), np.float32), "sqrt2"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    half_tensor = numpy_helper.from_array(np.array(half, np.float32))
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["h"]),
        helper.make_node("Div", ["h", "sqrt2"], ["scaled"]),
        helper.make_node("Erf", ["scaled"], ["erf"]),
        helper.make_node("Add", ["erf", "one"], ["one_plus"]),
        helper.make_node("Constant", [], ["half"], value=half_tensor),
        helper.make_node("Mul", ["half", "one_plus"], ["halved"]),  # 0.5 first: dynamo's order
        helper.make_node("Mul", ["h", "halved"], ["gelu"]),
    ]
    outputs = [helper.make_tensor_value_info("gelu", TensorProto.FLOAT, ["B", "S", 16])]
    if erf_users == 2:
        nodes.append(helper.make_node("Neg", ["erf"], ["erf_again"]))
        outputs.append(helper.make_tensor_value_info("erf_again", TensorProto.FLOAT, None))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", 8])
    graph = helper.make_graph(nodes, "gelu", [x], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return cpu_session(model.SerializeToString()).run(["gelu"], {"x": x})[0]


def test_dynamo_gelu_becomes_one_fused_op_with_the_same_values(tmp_path):
    model = dynamo_gelu_model()
    x = np.random.default_rng(1).normal(size=(2, 3, 8)).astype(np.float32)
    before = run(model, x)
    assert optimized_op_types(model.SerializeToString(), tmp_path)["Erf"] == 1  # not fused

    assert regroup_gelu(model.graph) == 1
    onnx.checker.check_model(model)
    after = optimized_op_types(model.SerializeToString(), tmp_path)
    assert after["Erf"] == 0 and after["BiasGelu"] + after["Gelu"] == 1
    np.testing.assert_allclose(run(model, x), before, rtol=1e-6, atol=1e-6)
    h = x @ numpy_helper.to_array(model.graph.initializer[0]) + numpy_helper.to_array(
        model.graph.initializer[1]
    )
    exact = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
    np.testing.assert_allclose(run(model, x), exact, rtol=1e-5, atol=1e-5)


def test_other_forms_are_left_alone(tmp_path):
    not_gelu = dynamo_gelu_model(half=0.6)
    shared = dynamo_gelu_model(erf_users=2)
    for model in (not_gelu, shared):
        original = model.SerializeToString()
        assert regroup_gelu(model.graph) == 0
        assert model.SerializeToString() == original


def test_file_is_rewritten_in_place_only_when_it_changes(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(dynamo_gelu_model(), str(path))
    assert regroup_gelu_file(path) == 1
    stamp = path.stat().st_mtime_ns
    assert regroup_gelu_file(path) == 0  # already in the fused form
    assert path.stat().st_mtime_ns == stamp
