"""GELU regrouped into the form onnxruntime fuses, checked on the graph onnxruntime runs."""

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tiny_models import optimized_op_types

from embedder.core.runtime import cpu_session
from export.graph_forms import regroup_gelu, regroup_gelu_file


def gelu_nodes(h: str, out: str, half: float = 0.5, swapped: bool = False) -> list:
    """GELU of `h` grouped as torch's dynamo exporter writes it, h * (0.5 * (1 + erf(h / sqrt 2))),
    into `out`; `swapped` puts each binary op's inputs the other way round."""

    def pair(a, b):
        return [b, a] if swapped else [a, b]

    half_tensor = numpy_helper.from_array(np.array(half, np.float32))
    return [
        helper.make_node("Div", [h, "sqrt2"], [f"{out}/scaled"]),
        helper.make_node("Erf", [f"{out}/scaled"], [f"{out}/erf"]),
        helper.make_node("Add", pair(f"{out}/erf", "one"), [f"{out}/one_plus"]),
        helper.make_node("Constant", [], [f"{out}/half"], value=half_tensor),
        helper.make_node("Mul", pair(f"{out}/half", f"{out}/one_plus"), [f"{out}/halved"]),
        helper.make_node("Mul", pair(h, f"{out}/halved"), [out]),
    ]


def gelu_model(layers: int = 1, extra_outputs: tuple[str, ...] = (), **gelu) -> onnx.ModelProto:
    """`layers` times x @ W + b then GELU; `extra_outputs` are also graph outputs."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(8, 8)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "b"),
        numpy_helper.from_array(np.array(math.sqrt(2), np.float32), "sqrt2"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    nodes, current = [], "x"
    for i in range(layers):
        nodes += [
            helper.make_node("MatMul", [current, "W"], [f"xw{i}"]),
            helper.make_node("Add", [f"xw{i}", "b"], [f"h{i}"]),
            *gelu_nodes(f"h{i}", f"gelu{i}", **gelu),
        ]
        current = f"gelu{i}"
    nodes.append(helper.make_node("Identity", [current], ["y"]))
    spec = ["B", "S", 8]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, spec)
               for n in ("y", *extra_outputs)]  # fmt: skip
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, spec)
    graph = helper.make_graph(nodes, "gelu", [x], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def exact_gelu_layers(model: onnx.ModelProto, x: np.ndarray, layers: int) -> np.ndarray:
    weight, bias = (numpy_helper.to_array(i) for i in model.graph.initializer[:2])
    for _ in range(layers):
        h = x.astype(np.float64) @ weight + bias
        x = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
    return x


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return cpu_session(model.SerializeToString()).run(["y"], {"x": x})[0]


@pytest.mark.parametrize("layers,swapped", [(1, False), (1, True), (2, False)])
def test_dynamo_gelu_becomes_one_fused_op_with_the_same_values(tmp_path, layers, swapped):
    model = gelu_model(layers, swapped=swapped)
    x = np.random.default_rng(1).normal(size=(2, 3, 8)).astype(np.float32)
    before = run(model, x)
    assert optimized_op_types(model.SerializeToString(), tmp_path)["Erf"] == layers  # unfused

    assert regroup_gelu(model.graph) == layers
    onnx.checker.check_model(model)
    after = optimized_op_types(model.SerializeToString(), tmp_path)
    assert after["Erf"] == 0 and after["BiasGelu"] + after["Gelu"] == layers
    np.testing.assert_allclose(run(model, x), before, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(run(model, x), exact_gelu_layers(model, x, layers), atol=1e-5)


def test_other_forms_are_left_alone():
    not_gelu = gelu_model(half=0.6)
    read_elsewhere = gelu_model(extra_outputs=("gelu0/halved",))  # its value would change
    shared = gelu_model()
    shared.graph.node.append(helper.make_node("Neg", ["gelu0/erf"], ["erf_again"]))
    outer_not_x = gelu_model()
    outer_not_x.graph.node[-2].input[:] = ["xw0", "gelu0/halved"]  # xw0 * ..., not h0 * ...
    for model in (not_gelu, read_elsewhere, shared, outer_not_x):
        original = model.SerializeToString()
        assert regroup_gelu(model.graph) == 0
        assert model.SerializeToString() == original


def test_a_value_read_in_a_subgraph_is_left_alone():
    model = gelu_model()
    branch = helper.make_graph(
        [helper.make_node("Identity", ["gelu0/halved"], ["branch_out"])], "branch", [],
        [helper.make_tensor_value_info("branch_out", TensorProto.FLOAT, None)],
    )  # fmt: skip
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    model.graph.node.append(helper.make_node("If", ["cond"], ["chosen"],
                                             then_branch=branch, else_branch=branch))  # fmt: skip
    assert regroup_gelu(model.graph) == 0


def test_file_is_rewritten_in_place_only_when_it_changes(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(gelu_model(), str(path))
    assert regroup_gelu_file(path) == 1
    stamp = path.stat().st_mtime_ns
    assert regroup_gelu_file(path) == 0  # already in the fused form
    assert path.stat().st_mtime_ns == stamp
