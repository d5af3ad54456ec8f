"""Calibrated rounding on tiny convolution graphs: what it minimises, what onnxruntime's
quantiser makes of it, and which convolutions it takes."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export import quantize, rounding

RNG = np.random.default_rng(0)


def _cancelling(channels: int, per_channel: int) -> np.ndarray:
    """Depthwise-like weights that nearly cancel (an edge detector's), one large outlier."""
    w = RNG.normal(0, 1, (channels, per_channel))
    w -= w.mean(1, keepdims=True) * 0.97
    w[:, 0] *= 3
    return w


def _graph(path, dw_weight, dense_weight, dense_bias=True, dilations=(1, 1), channels=None):
    """x (N, channels, 10, 10) -> depthwise 3x3 conv -> relu -> 1x1 conv -> features."""
    c, d = dw_weight.shape[0], dense_weight.shape[0]
    channels = channels or c
    inits = [numpy_helper.from_array(dw_weight.astype(np.float32), "dw.w"),
             numpy_helper.from_array(RNG.normal(0, 1, c).astype(np.float32), "dw.b"),
             numpy_helper.from_array(dense_weight.astype(np.float32), "pw.w")]  # fmt: skip
    pw_inputs = ["h", "pw.w"]
    if dense_bias:
        inits.append(numpy_helper.from_array(np.zeros(d, np.float32), "pw.b"))
        pw_inputs.append("pw.b")
    nodes = [helper.make_node("Conv", ["x", "dw.w", "dw.b"], ["a"], "dw", group=channels,
                              pads=[1, 1, 1, 1], dilations=list(dilations)),
             helper.make_node("Relu", ["a"], ["h"], "relu"),
             helper.make_node("Conv", pw_inputs, ["features"], "pw")]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", channels, 10, 10])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, None)],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _feeds(count, channels, seed):
    rng = np.random.default_rng(seed)
    smooth = rng.normal(1.0, 1.0, (count, channels, 5, 5)).repeat(2, 2).repeat(2, 3)
    return [{"x": (smooth + rng.normal(0, 0.2, smooth.shape)).astype(np.float32)}]


def _nearest(w):
    scale = np.abs(w).max(1, keepdims=True) / 127
    return np.round(w / scale) * scale


def test_the_rounding_minimises_its_objective_within_floor_and_ceiling():
    w = _cancelling(16, 9)
    x = RNG.normal(0, 1, (500, 9)) + 2.0
    m = x.T @ x / len(x)
    rounded = rounding.round_channels(w, m)
    scale = np.abs(w).max(1, keepdims=True) / 127

    def cost(v):
        e = v - w
        return np.einsum("ck,kl,cl->c", e, m, e)

    assert (cost(rounded) <= cost(_nearest(w)) + 1e-15).all()
    assert cost(rounded).sum() < 0.7 * cost(_nearest(w)).sum()  # it does move
    steps = rounded / scale
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-6)  # on int8 steps
    assert (np.floor(w / scale) - 1e-6 <= steps).all() and (
        steps <= np.ceil(w / scale) + 1e-6
    ).all()
    np.testing.assert_allclose(np.abs(rounded).max(1), np.abs(w).max(1))  # the scale is kept


def test_each_channels_largest_weight_stays_on_its_step():
    """Without an outlier the largest weight sits at +-127 steps only up to float round-off;
    it is pinned there, so onnxruntime derives the same scale (and integers) from the result."""
    w = RNG.normal(0, 1, (400, 9))
    x = RNG.normal(0, 1, (300, 9)) + 1.0
    rounded = rounding.round_channels(w, x.T @ x / len(x))
    np.testing.assert_allclose(np.abs(rounded).max(1), np.abs(w).max(1), rtol=1e-12)
    scale = (np.abs(w).max(1) / 127).astype(np.float32)[:, None]  # as onnxruntime computes it
    steps = rounded / scale
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-4)


@pytest.mark.parametrize("stride, pads", [((2, 2), (1, 1, 1, 1)), ((2, 1), (0, 1, 2, 0))])
def test_patches_reproduce_onnxruntime_convolutions(tmp_path, stride, pads):
    """Strided and asymmetrically padded, depthwise and dense: patches times weights is the
    graph's own Conv output."""
    import onnxruntime as ort

    x = RNG.normal(0, 1, (1, 4, 9, 7)).astype(np.float32)
    for group, weight in ((4, RNG.normal(0, 1, (4, 1, 3, 3))), (1, RNG.normal(0, 1, (5, 4, 3, 2)))):
        node = helper.make_node("Conv", ["x", "w"], ["y"], "c", group=group, strides=list(stride),
                                pads=list(pads))  # fmt: skip
        graph = helper.make_graph(
            [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 9, 7])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(weight.astype(np.float32), "w")])  # fmt: skip
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            ["y"], {"x": x})[0][0]  # fmt: skip
        conv = rounding.roundable_convs(graph)[0]
        rows = rounding.patches(x[0].astype(np.float64), conv)
        flat = weight.reshape(len(weight), -1)
        ours = np.einsum("cpk,ck->cp", rows, flat) if group > 1 else (rows @ flat.T).T
        np.testing.assert_allclose(ours.reshape(y.shape), y, atol=1e-4)


def test_calibrated_rounding_beats_nearest_on_held_out_inputs(tmp_path):
    """The depthwise conv's output error on inputs it never saw; the bias takes the mean."""
    dw = _cancelling(4, 9).reshape(4, 1, 3, 3)
    src = _graph(tmp_path / "g.onnx", dw, RNG.normal(0, 1, (6, 4, 1, 1)))
    chosen = rounding.calibrated_weights(src, _feeds(32, 4, seed=1))
    assert set(chosen) == {"dw", "pw"}
    conv = rounding.roundable_convs(onnx.load(str(src)).graph)[0]
    held_out = _feeds(32, 4, seed=2)[0]["x"]

    def outputs(weight, bias):
        rows = [rounding.patches(image, conv) for image in held_out.astype(np.float64)]
        return (
            np.stack([r @ weight.reshape(4, 9)[:, :, None] for r in rows])[..., 0] + bias[:, None]
        )

    bias = numpy_helper.to_array(onnx.load(str(src)).graph.initializer[1]).astype(np.float64)
    exact = outputs(dw, bias)
    ours = outputs(chosen["dw"]["dw.w"], chosen["dw"]["dw.b"])
    nearest = outputs(_nearest(dw.reshape(4, 9)), bias)
    assert ((ours - exact) ** 2).mean() < 0.9 * ((nearest - exact) ** 2).mean()
    assert abs((ours - exact).mean()) < abs((nearest - exact).mean())


def test_onnxruntime_quantises_the_rounded_weights_to_the_chosen_integers(tmp_path):
    src = _graph(tmp_path / "g.onnx", _cancelling(4, 9).reshape(4, 1, 3, 3),
                 RNG.normal(0, 1, (6, 4, 1, 1)), dense_bias=False)  # fmt: skip
    calibration = _feeds(16, 4, seed=1)
    chosen = rounding.calibrated_weights(src, calibration)
    rounding.with_weights(src, tmp_path / "r.onnx", chosen)
    graph = onnx.load(str(tmp_path / "r.onnx")).graph
    assert list(next(n for n in graph.node if n.name == "pw").input) == [
        "h",
        "pw.w",
        "pw.rounding_bias",
    ]
    with quantize.quiet_quantiser():
        quantize.static_int8(tmp_path / "r.onnx", tmp_path / "q.onnx", [], calibration,
                             tmp_path / "ranges.json")  # fmt: skip
    q = {
        i.name: numpy_helper.to_array(i)
        for i in onnx.load(str(tmp_path / "q.onnx")).graph.initializer
    }
    for conv, weight in (("dw", "dw.w"), ("pw", "pw.w")):
        ints, scale = q[f"{weight}_quantized"], q[f"{weight}_scale"]
        assert ints.dtype == np.int8
        restored = ints.astype(np.float64) * scale.reshape(-1, 1, 1, 1)
        np.testing.assert_allclose(restored, chosen[conv][weight], rtol=1e-6, atol=1e-9)


def test_which_convolutions_are_rounded(tmp_path, monkeypatch):
    """Dilated ones and dense ones over MAX_PATCH inputs per output keep nearest rounding."""
    dw, pw = _cancelling(4, 9).reshape(4, 1, 3, 3), RNG.normal(0, 1, (6, 4, 1, 1))
    both = rounding.roundable_convs(onnx.load(str(_graph(tmp_path / "a.onnx", dw, pw))).graph)
    assert [(c.name, c.depthwise, c.patch) for c in both] == [("dw", True, 9), ("pw", False, 1)]
    dilated = _graph(tmp_path / "b.onnx", dw, pw, dilations=(2, 2))
    assert [c.name for c in rounding.roundable_convs(onnx.load(str(dilated)).graph)] == ["pw"]
    monkeypatch.setattr(rounding, "MAX_PATCH", 3)
    assert [c.name for c in rounding.roundable_convs(onnx.load(str(dilated)).graph)] == []


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_moments_follow_the_input_channel(tmp_path, multiplier):
    """With a channel multiplier, output channel o reads input channel o // multiplier."""
    dw = _cancelling(4 * multiplier, 9).reshape(4 * multiplier, 1, 3, 3)
    pw = RNG.normal(0, 1, (6, 4 * multiplier, 1, 1))
    src = _graph(tmp_path / "g.onnx", dw, pw, channels=4)
    model = onnx.load(str(src))
    feeds = _feeds(8, 4, seed=3)
    conv = rounding.roundable_convs(model.graph)[0]
    m, mean = rounding.input_moments(model, [conv], feeds)["dw"]
    rows = np.concatenate([rounding.patches(x, conv) for x in feeds[0]["x"].astype(np.float64)], 1)
    np.testing.assert_allclose(m, np.einsum("cpk,cpl->ckl", rows, rows) / rows.shape[1])
    np.testing.assert_allclose(mean, rows.mean(1))
    chosen = rounding.calibrated_weights(src, feeds)["dw"]["dw.w"].reshape(-1, 9)
    for o, w in enumerate(dw.reshape(-1, 9)):
        alone = rounding.round_channels(
            w[None].astype(np.float32).astype(np.float64), m[o // multiplier]
        )
        np.testing.assert_allclose(chosen[o], alone[0], rtol=1e-6)
