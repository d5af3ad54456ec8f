"""The int8 recipes on tiny exported models: what is quantised, what stays fp32, and why."""

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from embedder.core.manifest import Manifest
from embedder.core.preprocess import TextTokenizer
from export import quantize
from export.errors import ExportError
from export.fidelity import calibration_feeds, cosine_rows, embed, photo_crops

SENTENCES = ["the cat sat on the mat", "a cup of coffee", "markets fell after the rate rise",
             "the striker scored twice", "rain is expected tomorrow"]  # fmt: skip


def _calibration(folder):
    m = Manifest.read(folder)
    tokenizer = TextTokenizer(folder / "tokenizer.json", m.preprocess)
    return [tokenizer(SENTENCES[:3]), tokenizer(SENTENCES[3:])]


def _ops(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_text_int8_quantises_the_weight_matmuls_only(tiny_bert_repo, tmp_path):
    folder = tiny_bert_repo / "tinybert" / "1"
    graph = onnx.load(str(folder / "model.onnx")).graph
    weights, fed = quantize.weight_matmuls(graph)
    plain = sum(n.op_type == "MatMul" for n in graph.node)
    assert 0 < len(fed) < len(weights) < plain  # attention's own MatMuls have no weight
    recipe = quantize.make_int8(folder / "model.onnx", tmp_path / "q.onnx", _calibration(folder))
    ops = _ops(tmp_path / "q.onnx")
    quantised = ops["MatMulInteger"] + ops["DynamicQuantizeMatMul"]
    assert quantised == len(weights) - len(recipe["kept_fp32"])
    assert ops["MatMul"] == plain - quantised  # activation x activation stays fp32
    assert recipe["scheme"].startswith("dynamic, int8 weights per channel")
    assert recipe["calibration_items"] == len(SENTENCES)


def test_the_sensitivity_pass_keeps_the_matmuls_that_help_most(tiny_bert_repo, tmp_path,
                                                               monkeypatch):  # fmt: skip
    """Asked for more than int8 can give, it keeps MAX_FP32 activation-fed MatMuls in fp32,
    measured on the calibration inputs, and the cosine it records is the file's own."""
    folder = tiny_bert_repo / "tinybert" / "1"
    monkeypatch.setattr(quantize, "CALIBRATION_COSINE", 1.01)  # unreachable: the pass runs out
    monkeypatch.setattr(quantize, "MAX_FP32", 1)
    calibration = _calibration(folder)
    recipe = quantize.make_int8(folder / "model.onnx", tmp_path / "q.onnx", calibration)
    weights, fed = quantize.weight_matmuls(onnx.load(str(folder / "model.onnx")).graph)
    assert len(recipe["kept_fp32"]) == 1 and recipe["kept_fp32"][0] in fed
    kept = {n.name: n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert kept[recipe["kept_fp32"][0]] == "MatMul"

    ref = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    reference = embed(ref, calibration)

    def cos(path) -> float:
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return float(cosine_rows(embed(s, calibration), reference).min())

    assert np.isclose(cos(tmp_path / "q.onnx"), recipe["calibration_cosine_min"], atol=1e-6)
    others = [name for name in fed if name != recipe["kept_fp32"][0]]
    for other in others:  # no other single choice does better on the calibration inputs
        nodes = [w for w in weights if w != other]
        quantize._dynamic_int8(folder / "model.onnx", tmp_path / "o.onnx", nodes)
        assert cos(tmp_path / "o.onnx") <= recipe["calibration_cosine_min"] + 1e-6


def test_the_recipe_is_recorded_in_the_manifest(tiny_bert_repo):
    variant = Manifest.read(tiny_bert_repo / "tinybert" / "1").variants["int8"]
    assert variant.recipe["scheme"].startswith("dynamic, int8 weights per channel")
    assert "calibration_cosine_min" in variant.recipe


class _ImageBackbone:  # what calibration_feeds reads from an export's backbone
    modality = "image"

    def __init__(self, folder):
        self.preprocess = Manifest.read(folder).preprocess


def test_cnn_int8_is_static_qdq_with_the_stem_the_calibration_chose(tiny_repo, tmp_path,
                                                                    monkeypatch):  # fmt: skip
    """Each stem length is tried; the shortest within the tolerance of the best is written,
    its convolutions left fp32 and every other one quantised between Q/DQ pairs."""
    folder = tiny_repo / "tiny_image" / "1"
    src = folder / "model.onnx"
    graph = onnx.load(str(src)).graph
    assert quantize.is_convolutional(graph)
    monkeypatch.setattr(quantize, "STEM_CANDIDATES", (0, 1, 2))
    monkeypatch.setattr(quantize, "STEM_TOLERANCE", 0.0)  # the best one, ties to the shortest
    calibration = calibration_feeds(_ImageBackbone(folder))
    recipe = quantize.make_int8(src, tmp_path / "q.onnx", calibration)
    assert recipe["scheme"].startswith("static QDQ, int8 weights per channel")
    sweep = {int(k): v for k, v in recipe["stem_sweep"].items()}
    assert sorted(sweep) == [0, 1, 2] and recipe["calibration_items"] == 96
    stem = len(recipe["kept_fp32"])
    assert stem == min(k for k, v in sweep.items() if v >= max(sweep.values()) - 1e-6)
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    assert recipe["kept_fp32"] == convs[:stem]

    quantised = onnx.load(str(tmp_path / "q.onnx")).graph
    producer = {out: n.op_type for n in quantised.node for out in n.output}
    for node in (n for n in quantised.node if n.op_type == "Conv"):
        weight_from = producer.get(node.input[1], "initializer")
        assert weight_from == ("initializer" if node.name in convs[:stem] else "DequantizeLinear")
    reference = embed(ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]),
                      calibration)  # fmt: skip
    session = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    cosine = cosine_rows(embed(session, calibration), reference).min()
    assert np.isclose(cosine, recipe["calibration_cosine_min"], atol=1e-6)
    assert np.isclose(cosine, sweep[stem], atol=1e-4)


def test_static_int8_needs_calibration_inputs(tiny_repo, tmp_path):
    with pytest.raises(ExportError, match="needs calibration inputs"):
        quantize.make_int8(tiny_repo / "tiny_image" / "1" / "model.onnx", tmp_path / "q.onnx", [])


def test_which_recipe_a_graph_gets(tiny_bert_repo, tiny_repo):
    text = onnx.load(str(tiny_bert_repo / "tinybert" / "1" / "model.onnx")).graph
    image = onnx.load(str(tiny_repo / "tiny_image" / "1" / "model.onnx")).graph
    assert not quantize.is_convolutional(text) and quantize.is_convolutional(image)
    recipe = Manifest.read(tiny_repo / "tiny_image" / "1").variants["int8"].recipe
    assert recipe["scheme"].startswith("static QDQ") and "stem_sweep" in recipe


def test_image_calibration_is_repeatable_and_covers_gray_and_small_inputs(tiny_repo):
    cfg = Manifest.read(tiny_repo / "tiny_image" / "1").preprocess
    crops = photo_crops(cfg, 24)
    assert crops.shape == (24, 32, 32, 3) and crops.dtype == np.uint8
    assert np.array_equal(crops, photo_crops(cfg, 24))
    gray = [c for c in crops if np.array_equal(c[..., 0], c[..., 1])]
    assert 0 < len(gray) < len(crops)
