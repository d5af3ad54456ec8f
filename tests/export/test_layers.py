"""Several cut points in one graph (`--layers`): one pooled output per layer from one pass,
each equal to the model cut at that layer alone, for CNNs, text encoders and ONNX cuts."""

import numpy as np
import onnx
import pytest

from embedder.core.manifest import ImagePreprocess, Manifest
from embedder.core.runtime import cpu_session
from export import ExportConfig, export_backbone
from export.errors import ExportError, UnknownLayerError
from export.generic import hf_encoder_cfg, module_backbone_cfg, onnx_file_cfg
from export.pipeline import sample_inputs, spread_layers

SMALL = ImagePreprocess(size=(32, 32), resize_shorter=36)


def outputs_of(folder, inputs) -> dict[str, np.ndarray]:
    """Every graph output of the model in `folder`, by name, from one run."""
    m = Manifest.read(folder)
    session = cpu_session(folder / m.file)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


def test_each_layer_output_equals_the_model_cut_there_alone(cnn, tmp_path):
    backbone, cfg = module_backbone_cfg(cnn, "tiny", SMALL)
    m = export_backbone(ExportConfig("tiny", repo=tmp_path, layers=("2", "0")), backbone,
                        cfg).manifest  # fmt: skip
    assert m.name == "tiny_layers" and (m.layer, m.dim) == ("2", 24)
    assert [(o.layer, o.output, o.dim) for o in m.layer_outputs] == [
        ("0", "layer/0", 8),
        ("2", "features", 24),
    ]  # fmt: skip, shallowest first
    assert all(o.parity_max_abs_diff <= 1e-6 for o in m.layer_outputs)
    inputs = sample_inputs(backbone)
    together = outputs_of(tmp_path / "tiny_layers" / "1", inputs)
    assert sorted(together) == ["features", "layer/0"]
    for layer, name in (("0", "layer/0"), ("2", "features")):
        alone = export_backbone(ExportConfig("tiny", repo=tmp_path, layer=layer,
                                             output_name=f"alone{layer}"), backbone, cfg)  # fmt: skip
        expected = outputs_of(alone.folder, inputs)["features"]
        np.testing.assert_allclose(together[name], expected, rtol=0, atol=1e-6)


def test_one_pass_computes_them_all(cnn, tmp_path):
    """The shallow output is read off the deep pass: one Conv per stage, not one per output."""
    backbone, cfg = module_backbone_cfg(cnn, "tiny", SMALL)
    export_backbone(ExportConfig("tiny", repo=tmp_path, layers=("0", "1", "2")), backbone, cfg)
    several = onnx.load(str(tmp_path / "tiny_layers/1/model.onnx")).graph.node
    export_backbone(ExportConfig("tiny", repo=tmp_path), backbone, cfg)
    one = onnx.load(str(tmp_path / "tiny/1/model.onnx")).graph.node
    convs = [sum(n.op_type == "Conv" for n in graph) for graph in (several, one)]
    assert convs[0] == convs[1] > 0


def test_auto_spreads_over_the_depth_and_ends_at_the_default_cut(cnn, tmp_path):
    backbone, _ = module_backbone_cfg(cnn, "tiny", SMALL)
    assert spread_layers(backbone, 4) == ["0", "1", "2"]  # three stages: all of them
    assert spread_layers(backbone, 2) == ["1", "2"]
    from export.registry import get_pretrained_cfg

    assert get_pretrained_cfg("mobilenet_v2").auto_layers[-1] == "features.18"


def test_layers_refuse_variants_both_flags_and_unknown_layers(cnn, tmp_path):
    backbone, cfg = module_backbone_cfg(cnn, "tiny", SMALL)
    with pytest.raises(ExportError, match="fp32 only"):
        export_backbone(ExportConfig("tiny", repo=tmp_path, layers=("0", "2"), variants=("int8",)),
                        backbone, cfg)  # fmt: skip
    with pytest.raises(ExportError, match="not both"):
        export_backbone(ExportConfig("tiny", repo=tmp_path, layers=("0",), layer="2"), backbone,
                        cfg)  # fmt: skip
    with pytest.raises(UnknownLayerError, match="layers you can cut at: 0, 1, 2"):
        export_backbone(ExportConfig("tiny", repo=tmp_path, layers=("0", "9")), backbone, cfg)
    assert not (tmp_path / "tiny_layers").exists()


def test_text_encoder_layers_are_mean_pooled_per_layer(tiny_bert_dir, tmp_path):
    backbone, cfg = hf_encoder_cfg(tiny_bert_dir, "tinybert", max_length=16)
    layers = ("embeddings", "encoder.layer.1")
    m = export_backbone(ExportConfig("tinybert", repo=tmp_path, layers=layers), backbone,
                        cfg).manifest  # fmt: skip
    assert [o.layer for o in m.layer_outputs] == list(layers)
    inputs = sample_inputs(backbone)
    together = outputs_of(tmp_path / "tinybert_layers" / "1", inputs)
    for layer, name in zip(layers, ("layer/embeddings", "features"), strict=True):
        np.testing.assert_allclose(together[name], backbone.reference(inputs, layer), atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(together[name], axis=1), 1.0, atol=1e-5)


def test_an_onnx_graph_is_cut_at_several_tensors(vit_onnx, tmp_path):
    adds = [n.output[0] for n in onnx.load(str(vit_onnx)).graph.node if n.op_type == "Add"]
    backbone, cfg = onnx_file_cfg(vit_onnx, "vit", "image", adds[-1], SMALL, token_pooling="mean")
    layers = (adds[-2], adds[-1])
    m = export_backbone(ExportConfig("vit", repo=tmp_path, layers=layers), backbone,
                        cfg).manifest  # fmt: skip
    inputs = sample_inputs(backbone)
    together = outputs_of(tmp_path / "vit_layers" / "1", inputs)
    for out in m.layer_outputs:
        np.testing.assert_allclose(together[out.output], backbone.reference(inputs, out.layer),
                                   atol=1e-5)  # fmt: skip
    assert together[m.layer_outputs[0].output].shape == (len(inputs["pixels"]), 16)
