"""The int8 recipes on tiny exported models: what is quantised, what stays fp32, and why."""

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort

from embedder.core.manifest import Manifest
from embedder.core.preprocess import TextTokenizer
from export import quantize
from export.fidelity import cosine_rows, embed

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
        quantize._dynamic(folder / "model.onnx", tmp_path / "o.onnx", nodes, "int8")
        assert cos(tmp_path / "o.onnx") <= recipe["calibration_cosine_min"] + 1e-6


def test_the_recipe_is_recorded_in_the_manifest(tiny_bert_repo):
    variant = Manifest.read(tiny_bert_repo / "tinybert" / "1").variants["int8"]
    assert variant.recipe["scheme"].startswith("dynamic, int8 weights per channel")
    assert "calibration_cosine_min" in variant.recipe
