"""Calibrated rounding of convolution weights to int8 steps, per output channel.

Rounding each weight to its nearest int8 step costs more than the step suggests where a
channel's few weights nearly cancel, as in depthwise convolutions with batch norm folded in:
EfficientNet-Lite0 with every Conv weight rounded to nearest (activations fp32) reads
calibration cosine p5 0.973, its first depthwise convolution alone 0.984.

Here each output channel's integers q are chosen to minimise the expected squared error of
that channel's output over the calibration inputs, E[((s q - w) . x)^2] = e' M e, with M the
second moment of the convolution's input patches (the layer-wise objective of AdaRound,
Nagel et al. 2020, solved directly): coordinate descent over the floor and ceiling of w / s,
starting from nearest rounding. The bias then absorbs the mean error, b -= e . E[x]. The
weights are written back as s q with the scale onnxruntime's quantiser uses (max |w| / 127
per channel, the largest weight stays at +-127), so it maps them to exactly these integers.
On EfficientNet-Lite0 the weights alone then read 0.997 instead of 0.973.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from embedder.core.runtime import cpu_session

MAX_PATCH = 1152  # inputs per output of a dense convolution whose moments are gathered
# (the moment matrix is MAX_PATCH^2 float64); larger ones keep nearest rounding
SWEEPS = 20  # coordinate descent passes at most (EfficientNet-Lite0 settles within 6)
Feeds = list[dict[str, np.ndarray]]


@dataclass(frozen=True)
class ConvShape:
    """What the moments of one Conv's input patches depend on."""

    name: str
    data: str  # the input tensor
    weight: str
    bias: str | None
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    depthwise: bool  # one input channel per group

    @property
    def patch(self) -> int:
        return self.kernel[0] * self.kernel[1]


def roundable_convs(graph: onnx.GraphProto) -> list[ConvShape]:
    """The named 2-D Convs with their own float weight initializer (and bias initializer, if
    any) whose moments are affordable: depthwise ones and dense ones of at most MAX_PATCH
    inputs per output (others keep nearest)."""
    weights = {i.name: i for i in graph.initializer}
    uses = Counter(name for node in graph.node for name in node.input)
    found = []
    for node in graph.node:
        w = weights.get(node.input[1]) if node.op_type == "Conv" else None
        if w is None or len(w.dims) != 4 or w.data_type != onnx.TensorProto.FLOAT:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        if any(d != 1 for d in attrs.get("dilations", [1, 1])):
            continue
        group, (_, per_group, kh, kw) = attrs.get("group", 1), w.dims
        depthwise = group > 1 and per_group == 1
        if not depthwise and (group != 1 or per_group * kh * kw > MAX_PATCH):
            continue
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if (bias and bias not in weights) or uses[node.input[1]] > 1 or not node.name:
            continue  # a computed bias, a shared weight or an unnamed node: nearest
        found.append(ConvShape(node.name, node.input[0], node.input[1], bias, (kh, kw),
                               tuple(attrs.get("strides", [1, 1])),
                               tuple(attrs.get("pads", [0, 0, 0, 0])), depthwise))  # fmt: skip
    return found


def patches(x: np.ndarray, conv: ConvShape) -> np.ndarray:
    """One image's input (C, H, W) as the rows each output sees: depthwise (C, P, kh*kw),
    dense (P, C*kh*kw) in the weight's (C, kh, kw) order."""
    (kh, kw), (sh, sw), (t, left, b, r) = conv.kernel, conv.stride, conv.pads
    padded = np.pad(x, ((0, 0), (t, b), (left, r)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(1, 2))
    windows = windows[:, ::sh, ::sw]  # (C, Ho, Wo, kh, kw)
    c = x.shape[0]
    if conv.depthwise:
        return windows.reshape(c, -1, kh * kw)
    return windows.transpose(1, 2, 0, 3, 4).reshape(-1, c * kh * kw)


def input_moments(model: onnx.ModelProto, convs: list[ConvShape],
                  chunks: Feeds) -> dict[str, tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """Per Conv: (M, mean) of its input patches over the calibration chunks, M (C, k, k)
    per channel for depthwise ones, (k, k) for dense ones. `model` is left as it was."""
    tapped = onnx.ModelProto()
    tapped.CopyFrom(model)
    taps = sorted({c.data for c in convs})
    known = {o.name for o in tapped.graph.output}
    tapped.graph.output.extend(onnx.ValueInfoProto(name=t) for t in taps if t not in known)
    session = cpu_session(tapped.SerializeToString())
    sums: dict[str, list] = {c.name: [0.0, 0.0, 0] for c in convs}
    for feeds in chunks:
        tensors = dict(zip(taps, session.run(taps, feeds), strict=True))
        for conv in convs:
            acc = sums[conv.name]
            for image in tensors[conv.data].astype(np.float64):
                rows = patches(image, conv)
                acc[0] = acc[0] + np.swapaxes(rows, -1, -2) @ rows
                acc[1] = acc[1] + rows.sum(-2)
                acc[2] += rows.shape[-2]
    return {name: (m / n, s / n) for name, (m, s, n) in sums.items()}


def round_channels(w: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Weights (C, K) moved onto int8 steps of max |w_c| / 127 per channel, choosing between
    floor and ceiling to minimise e' M e per channel (M (C, K, K) or shared (K, K)). Each
    channel's largest weight stays at +-127, so the scale onnxruntime derives stays this one."""
    scale = np.abs(w).max(1) / 127
    scale[scale == 0] = 1.0
    steps = w / scale[:, None]
    q = np.clip(np.round(steps), -127, 127)
    floor, ceil = np.floor(steps), np.ceil(steps)
    pinned = np.arange(w.shape[1]) == np.abs(w).argmax(1)[:, None]
    m = np.broadcast_to(m, (len(w), *m.shape[-2:]))
    grad = np.einsum("ckl,cl->ck", m, q * scale[:, None] - w)  # M e, kept up to date
    diag = np.einsum("ckk->ck", m)
    rows = np.arange(len(w))
    for _ in range(SWEEPS):
        moved = 0
        for j in range(w.shape[1]):
            best, gain = np.zeros(len(w)), np.zeros(len(w))
            for step in (-1.0, 1.0):
                new = q[:, j] + step
                allowed = ((new == floor[:, j]) | (new == ceil[:, j])) & ~pinned[:, j]
                allowed &= np.abs(new) <= 127
                change = scale * step * (2 * grad[:, j] + scale * step * diag[:, j])
                better = allowed & (change < gain - 1e-15)
                best[better], gain[better] = step, change[better]
            idx = rows[best != 0]
            if len(idx):
                moved += len(idx)
                q[idx, j] += best[idx]
                grad[idx] += m[idx, :, j] * (scale[idx] * best[idx])[:, None]
        if not moved:
            break
    return q * scale[:, None]


def calibrated_weights(src: Path, chunks: Feeds) -> dict[str, dict[str, np.ndarray]]:
    """Per roundable Conv: its new weight and bias initializers, by initializer name."""
    model = onnx.load(str(src))
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    convs = roundable_convs(model.graph)
    moments = input_moments(model, convs, chunks) if convs else {}
    chosen = {}
    for conv in convs:
        m, mean = moments[conv.name]
        w = values[conv.weight].astype(np.float64)
        flat = w.reshape(len(w), -1)
        if conv.depthwise:  # output channel o reads input channel o // multiplier
            per_input = len(w) // len(m)
            m, mean = np.repeat(m, per_input, axis=0), np.repeat(mean, per_input, axis=0)
        rounded = round_channels(flat, m)
        error = rounded - flat
        shift = (error * mean).sum(1) if conv.depthwise else error @ mean
        bias = values[conv.bias].astype(np.float64) if conv.bias else np.zeros(len(w))
        chosen[conv.name] = {conv.weight: rounded.reshape(w.shape).astype(np.float32),
                             conv.bias or f"{conv.name}.rounding_bias":
                                 (bias - shift).astype(np.float32)}  # fmt: skip
    return chosen


def with_weights(src: Path, dst: Path, chosen: dict[str, dict[str, np.ndarray]]) -> None:
    """src with the chosen Convs' initializers replaced (a bias added where one had none)."""
    model = onnx.load(str(src))
    new = {name: array for arrays in chosen.values() for name, array in arrays.items()}
    for init in model.graph.initializer:
        if init.name in new:
            init.CopyFrom(numpy_helper.from_array(new.pop(init.name), init.name))
    for node in model.graph.node:
        for name in [n for n in chosen.get(node.name, {}) if n in new]:  # added biases
            del node.input[2:]
            node.input.append(name)
            model.graph.initializer.append(numpy_helper.from_array(new.pop(name), name))
    onnx.save(model, str(dst))
