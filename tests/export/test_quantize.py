"""The int8 recipes on tiny exported models: what is quantised, what stays fp32, and why."""

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from embedder.core.manifest import ImagePreprocess, Manifest
from embedder.core.preprocess import TextTokenizer
from embedder.core.vectors import cosine_rows
from export import quantize
from export.errors import ExportError
from export.fidelity import calibration_feeds, embed
from export.samples import CALIBRATION_PHOTOS, photo_crops

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


def _weights_and_activations(path, kept: list[str]) -> None:
    """Every Conv but `kept` reads int8 weights with one scale per output channel from a
    DequantizeLinear, and uint8 activations quantised per tensor; `kept` ones read fp32."""
    graph = onnx.load(str(path)).graph
    producer = {out: n for n in graph.node for out in n.output}
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert {n.name for n in convs} >= set(kept)
    for node in convs:
        weight, data = producer.get(node.input[1]), producer.get(node.input[0])
        if node.name in kept:
            assert weight is None and node.input[1] in constants
            continue
        assert weight.op_type == "DequantizeLinear" and data.op_type == "DequantizeLinear"
        w, scale, zero = (constants[i] for i in weight.input)
        assert w.dtype == np.int8 and zero.dtype == np.int8
        assert scale.shape == (w.shape[0],)  # per output channel
        a_scale, a_zero = constants[data.input[1]], constants[data.input[2]]
        assert a_zero.dtype == np.uint8 and a_scale.shape == ()  # per tensor


def test_cnn_int8_is_static_qdq_with_the_stem_the_calibration_chose(tiny_repo, tmp_path,
                                                                    monkeypatch):  # fmt: skip
    """Each stem length is tried; the shortest within the tolerance of the best is written,
    its convolutions left fp32 and every other one quantised between Q/DQ pairs."""
    folder = tiny_repo / "tiny_image" / "1"
    src = folder / "model.onnx"
    graph = onnx.load(str(src)).graph
    assert quantize.is_convolutional(graph)
    monkeypatch.setattr(quantize, "STEM_CANDIDATES", (0, 1, 2))
    monkeypatch.setattr(quantize, "CALIBRATION_COSINE", 1.01)  # none reaches it, so:
    monkeypatch.setattr(quantize, "STEM_TOLERANCE", 0.0)  # the best one, ties to the shortest
    calibration = calibration_feeds(_ImageBackbone(folder))
    recipe = quantize.make_int8(src, tmp_path / "q.onnx", calibration)
    assert recipe["scheme"].startswith("static QDQ, int8 weights per channel")
    sweep = {int(k): v for k, v in recipe["stem_sweep"].items()}
    assert sorted(sweep) == [0, 1, 2] and recipe["calibration_items"] == 96
    stem = len(recipe["kept_fp32"])
    assert stem == min(k for k, v in sweep.items() if v >= max(sweep.values()))
    assert recipe["calibration_cosine_p5"] == sweep[stem]
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    assert recipe["kept_fp32"] == convs[:stem]
    _weights_and_activations(tmp_path / "q.onnx", convs[:stem])

    reference = embed(ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]),
                      calibration)  # fmt: skip
    session = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    cosines = cosine_rows(embed(session, calibration), reference)  # of the file written
    assert round(float(np.percentile(cosines, quantize.STEM_PERCENTILE)), 6) == sweep[stem]
    assert np.isclose(cosines.min(), recipe["calibration_cosine_min"], atol=1e-9)


def test_the_fidelity_gate_chooses_the_stem_when_given_probes(tiny_repo, tmp_path, monkeypatch):
    """Stems are gated shortest first, and the first that passes is written and ends the
    sweep (the tiny model passes with every stem: the shortest, alone), the rounding recorded."""
    from export.fidelity import embed_fp32, probe_sets

    folder = tiny_repo / "tiny_image" / "1"
    monkeypatch.setattr(quantize, "STEM_CANDIDATES", (2, 1))
    probes = probe_sets(_ImageBackbone(folder))
    embed_fp32(probes, ort.InferenceSession(str(folder / "model.onnx"),
                                            providers=["CPUExecutionProvider"]))  # fmt: skip
    recipe = quantize.make_int8(folder / "model.onnx", tmp_path / "q.onnx",
                                calibration_feeds(_ImageBackbone(folder)), probes)  # fmt: skip
    assert recipe["stem_gate_passed"] == {"1": True}, recipe
    assert len(recipe["kept_fp32"]) == 1 and recipe["stem_chosen_by"] == "fidelity gate"
    assert (
        recipe["rounding"]
        == "calibrated for 2 of the 2 quantised convolutions, nearest for the rest"
    )


@pytest.mark.parametrize(
    "sweep, passed, stem",
    [  # each picks a longer stem than the shortest, and not merely the best-scoring one
        ({1: 0.999, 3: 0.98, 6: 0.97}, {1: False, 3: True, 6: True}, 3),  # the gate outranks
        ({6: 0.998, 1: 0.95, 3: 0.995}, {1: False, 3: False, 6: False}, 3),  # none passed
        ({9: 0.96, 6: 0.98, 3: 0.975, 1: 0.95}, None, 3),  # none reaches: within 0.01 of 6
        ({1: 0.9, 3: 0.995, 6: 0.999}, {}, 3),  # no probes: the target
    ],
)
def test_choose_stem_takes_the_shortest_that_passes_then_reaches_then_nearly_equals_the_best(
    monkeypatch, sweep, passed, stem
):
    monkeypatch.setattr(quantize, "CALIBRATION_COSINE", 0.993)
    monkeypatch.setattr(quantize, "STEM_TOLERANCE", 0.01)
    assert quantize.choose_stem(sweep, passed) == stem


def test_the_stem_written_is_the_shortest_that_reaches_the_target(tiny_repo, tmp_path,
                                                                  monkeypatch):  # fmt: skip
    """A target every stem reaches takes the shortest; a target at the best score takes the
    shortest stem that reaches it, longer than the first candidate when that scores lower (the
    tiny model's stem 0 reads 0.999995, stems 1 and 2 0.999998). The order of the candidates
    does not matter."""
    folder = tiny_repo / "tiny_image" / "1"
    monkeypatch.setattr(quantize, "STEM_CANDIDATES", (2, 0, 1))
    monkeypatch.setattr(quantize, "STEM_TOLERANCE", 0.0)
    calibration = calibration_feeds(_ImageBackbone(folder))
    monkeypatch.setattr(quantize, "CALIBRATION_COSINE", -1.0)
    every = quantize.make_int8(folder / "model.onnx", tmp_path / "q.onnx", calibration)
    assert every["kept_fp32"] == [] and set(every["stem_sweep"]) == {"0", "1", "2"}
    _weights_and_activations(tmp_path / "q.onnx", [])
    sweep = {int(k): v for k, v in every["stem_sweep"].items()}
    monkeypatch.setattr(quantize, "CALIBRATION_COSINE", max(sweep.values()))
    best = quantize.make_int8(folder / "model.onnx", tmp_path / "q.onnx", calibration)
    assert best["stem_sweep"] == every["stem_sweep"]  # the sweep is deterministic
    stem = min(k for k, v in sweep.items() if v >= max(sweep.values()))
    assert len(best["kept_fp32"]) == stem and best["calibration_cosine_p5"] == sweep[stem]
    graph = onnx.load(str(folder / "model.onnx")).graph
    _weights_and_activations(tmp_path / "q.onnx", [n.name for n in graph.node
                                                   if n.op_type == "Conv"][:stem])  # fmt: skip


def test_unnamed_convolutions_are_named_before_they_are_kept(tiny_repo, tmp_path, monkeypatch):
    folder = tiny_repo / "tiny_image" / "1"
    model = onnx.load(str(folder / "model.onnx"))
    for node in model.graph.node:
        node.name = ""
    onnx.save(model, str(tmp_path / "unnamed.onnx"))
    calibration = calibration_feeds(_ImageBackbone(folder))
    with pytest.raises(ExportError, match="unnamed Conv nodes"):
        quantize.stem_int8(tmp_path / "unnamed.onnx", tmp_path / "s.onnx", 1, calibration,
                           tmp_path / "ranges.json")  # fmt: skip
    monkeypatch.setattr(quantize, "STEM_CANDIDATES", (1,))
    recipe = quantize.make_int8(tmp_path / "unnamed.onnx", tmp_path / "q.onnx", calibration)
    assert len(recipe["kept_fp32"]) == 1 and recipe["kept_fp32"][0]
    _weights_and_activations(tmp_path / "q.onnx", recipe["kept_fp32"])


def test_a_graph_without_weight_matmuls_is_refused(tmp_path):
    """A Gemm-only graph takes the MatMul recipe (not convolutional) and has nothing for it."""
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["features"], name="gemm")],
        "gemm_only",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 3])],
        [w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]),
              str(tmp_path / "gemm.onnx"))  # fmt: skip
    calibration = [{"x": np.ones((2, 4), np.float32)}]
    with pytest.raises(ExportError, match="no MatMul with a constant weight"):
        quantize.make_int8(tmp_path / "gemm.onnx", tmp_path / "q.onnx", calibration)
    assert not (tmp_path / "q.onnx").exists()


def test_the_stem_recipe_refuses_a_transformer(tiny_bert_repo, tmp_path):
    folder = tiny_bert_repo / "tinybert" / "1"
    with pytest.raises(ExportError, match="outside convolutions"):
        quantize.stem_int8(folder / "model.onnx", tmp_path / "q.onnx", 0, _calibration(folder),
                           tmp_path / "ranges.json")  # fmt: skip


@pytest.mark.parametrize("model", ["tiny_image", "tinybert"])
def test_int8_needs_calibration_inputs(tiny_repo, tiny_bert_repo, tmp_path, model):
    repo = tiny_repo if model == "tiny_image" else tiny_bert_repo
    with pytest.raises(ExportError, match="needs calibration inputs"):
        quantize.make_int8(repo / model / "1" / "model.onnx", tmp_path / "q.onnx", [])
    assert not (tmp_path / "q.onnx").exists()


EFFICIENTNET = {1: 0.99572, 3: 0.997732, 6: 0.998268, 9: 0.998488}  # measured at 91ac00e
MOBILENET = {1: 0.660059, 3: 0.907397, 6: 0.963136, 9: 0.960897}


@pytest.mark.parametrize(
    "sweep, passed, stem",
    [
        (EFFICIENTNET, {1: False, 3: True, 6: False, 9: True}, 3),  # the gate decides
        (EFFICIENTNET, {1: False, 3: False, 6: True, 9: True}, 6),
        (EFFICIENTNET, {}, 1),  # without a gate: the shortest that reaches 0.993
        (MOBILENET, dict.fromkeys(MOBILENET, False), 6),  # none passes, none reaches 0.993:
        # the shortest within 0.01 of the best
        ({0: 0.995, 3: 0.999, 5: 0.999}, None, 0),  # the shortest that reaches it, not the best
        ({0: 0.90, 3: 0.95, 5: 0.93}, {0: False, 3: False, 5: False}, 3),
        ({0: 0.90, 3: 0.95, 5: 0.93}, {0: False, 3: False, 5: True}, 5),
    ],
)
def test_the_stem_choice(sweep, passed, stem):
    assert quantize.choose_stem(sweep, passed) == stem


def test_no_stem_candidate_fits():
    with pytest.raises(ExportError, match="no stem length"):
        quantize.choose_stem({})


def test_which_recipe_a_graph_gets(tiny_bert_repo, tiny_repo):
    text = onnx.load(str(tiny_bert_repo / "tinybert" / "1" / "model.onnx")).graph
    image = onnx.load(str(tiny_repo / "tiny_image" / "1" / "model.onnx")).graph
    assert not quantize.is_convolutional(text) and quantize.is_convolutional(image)
    recipe = Manifest.read(tiny_repo / "tiny_image" / "1").variants["int8"].recipe
    assert recipe["scheme"].startswith("static QDQ") and "stem_sweep" in recipe


def _detail_above(crop: np.ndarray, side: int) -> float:
    """The share of a crop's variation lost by a round trip through side x side pixels."""
    from PIL import Image

    g = crop.mean(-1).astype(np.float32)
    h, w = g.shape
    small = Image.fromarray(g).resize((side, side), Image.BILINEAR)
    back = np.asarray(small.resize((w, h), Image.BILINEAR))
    return float(np.abs(g - back).mean() / max(np.abs(g - g.mean()).mean(), 1e-9))


def test_image_calibration_is_repeatable_and_covers_gray_and_small_inputs():
    """On colour noise photos about 30 % of the crops come out gray, and about 30 % carry no
    more detail than 40 x 40 pixels (shrunk to a thumbnail, then resized up)."""
    rng = np.random.default_rng(1)
    photos = [rng.integers(0, 256, (400, 400, 3), np.uint8) for _ in range(3)]
    cfg = ImagePreprocess(size=(64, 64), resize_shorter=64)
    crops = photo_crops(cfg, 60, photos)
    assert crops.shape == (60, 64, 64, 3) and crops.dtype == np.uint8
    assert np.array_equal(crops, photo_crops(cfg, 60, photos))
    gray = [np.array_equal(c[..., 0], c[..., 1]) and np.array_equal(c[..., 1], c[..., 2])
            for c in crops]  # fmt: skip
    lost = [_detail_above(c, 40) for c in crops]
    assert all(x < 0.6 or x > 0.7 for x in lost)  # a thumbnail loses < 0.5; noise ~0.77
    thumbnails = [x < 0.6 for x in lost]
    assert 8 <= sum(gray) <= 30 and 8 <= sum(thumbnails) <= 30


def test_calibration_holds_one_chunk_of_inputs_at_a_time(tiny_repo, tmp_path, monkeypatch):
    """onnxruntime's calibrator keeps every intermediate tensor of what one collect_data call
    reads; each call reads one chunk, and the histograms add up over all of them."""
    from onnxruntime.quantization import calibrate

    folder = tiny_repo / "tiny_image" / "1"
    calibration = calibration_feeds(_ImageBackbone(folder))
    seen, collect = [], calibrate.HistogramCalibrater.collect_data

    def counting(self, reader):
        batches = list(iter(reader.get_next, None))
        seen.append(sum(len(b["pixels"]) for b in batches))
        reader.batches = iter(batches)
        return collect(self, reader)

    monkeypatch.setattr(calibrate.HistogramCalibrater, "collect_data", counting)
    quantize.static_int8(folder / "model.onnx", tmp_path / "q.onnx", [], calibration,
                         tmp_path / "ranges.json")  # fmt: skip
    assert seen == [quantize.CALIBRATION_CHUNK] * (96 // quantize.CALIBRATION_CHUNK)
    _weights_and_activations(tmp_path / "q.onnx", [])


def test_sixteen_bit_activations_share_the_ranges_and_come_closer_to_fp32(tiny_repo, tmp_path):
    """activation_bits=16 (what bench/int8_bound.py measures 8 bits against): uint16 Q/DQ
    over the same cached ranges, 257 times finer steps, int8 weights as before."""
    folder = tiny_repo / "tiny_image" / "1"
    calibration = calibration_feeds(_ImageBackbone(folder))
    ranges, fp32 = tmp_path / "ranges.json", folder / "model.onnx"
    steps, error = {}, {}
    reference = embed(ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]),
                      calibration)  # fmt: skip
    for bits, dtype in ((8, np.uint8), (16, np.uint16)):
        dst = tmp_path / f"q{bits}.onnx"
        quantize.static_int8(fp32, dst, [], calibration, ranges, activation_bits=bits)
        graph = onnx.load(str(dst)).graph
        constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        quantizers = [n for n in graph.node if n.op_type == "QuantizeLinear"]
        assert {constants[n.input[2]].dtype for n in quantizers} == {np.dtype(dtype)}
        steps[bits] = {n.input[0]: float(constants[n.input[1]]) for n in quantizers}
        session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
        error[bits] = np.abs(embed(session, calibration) - reference).max()
    assert steps[8].keys() == steps[16].keys() and len(steps[8]) >= 3
    for tensor, step in steps[8].items():
        assert steps[16][tensor] * 65535 == pytest.approx(step * 255, rel=1e-3), tensor
    assert error[16] < error[8], error
    with pytest.raises(ExportError, match="8 or 16 bits, not 4"):
        quantize.static_int8(fp32, tmp_path / "q4.onnx", [], calibration, ranges, 4)


def test_calibration_photos_are_neither_samples_nor_probes():
    """The export table's sample cosines and the gate's probes stay out of calibration."""
    from export.fidelity import _digits, _faces
    from export.samples import calibration_photos, sample_photos

    photos = calibration_photos()
    assert len(photos) == len(CALIBRATION_PHOTOS) + 2  # and the stereo pair
    others = [*sample_photos().values(), *_faces()[0], *_digits()[0]]
    for photo in photos:
        assert photo.ndim == 3 and photo.dtype == np.uint8
        assert not any(photo.shape[:2] == o.shape[:2] and np.array_equal(photo[..., 0], o[..., 0])
                       for o in others)  # fmt: skip
