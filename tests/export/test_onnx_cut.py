"""Cutting a backbone out of an existing ONNX graph (the DINOv2 / "I have an ONNX" path)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from tiny_models import TinyViT

from embedder.core.manifest import ImagePreprocess
from export import ExportConfig, export_backbone
from export.errors import UnknownLayerError
from export.generic import onnx_file_cfg

SMALL = ImagePreprocess(size=(32, 32), resize_shorter=32)


def _residual_tensor(path, block: int) -> str:
    """Output of the residual Add after block `block` in the tiny ViT graph."""
    adds = [n.output[0] for n in onnx.load(str(path)).graph.node if n.op_type == "Add"]
    return adds[-2 + block] if block < 2 else adds[-1]


@pytest.mark.parametrize("pooling,dim", [("cls", 16), ("mean", 16), ("cls+mean", 32)])
def test_cut_and_pool_matches_source_graph(vit_onnx, tmp_path, pooling, dim):
    cut = _residual_tensor(vit_onnx, 1)
    backbone, cfg = onnx_file_cfg(vit_onnx, "vit", "image", cut, SMALL, token_pooling=pooling)
    m = export_backbone(ExportConfig("vit", repo=tmp_path), backbone, cfg).manifest
    assert (m.dim, m.pooling, m.layer) == (dim, pooling, cut)
    assert m.parity_max_abs_diff <= 1e-5
    graph = onnx.load(str(tmp_path / "vit/1/model.onnx")).graph
    assert [i.name for i in graph.input] == ["pixels"]
    assert "head" not in {n.name.split("/")[1] for n in graph.node if n.name.count("/") > 1}


def test_cut_graph_equals_torch_tokens(vit_onnx, tmp_path):
    """Independent of the exporter's own parity check: compare against the torch model."""
    cut = _residual_tensor(vit_onnx, 1)
    backbone, cfg = onnx_file_cfg(vit_onnx, "vit", "image", cut, SMALL, token_pooling="cls")
    export_backbone(ExportConfig("vit", repo=tmp_path), backbone, cfg)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    ours = ort.InferenceSession(
        str(tmp_path / "vit/1/model.onnx"), providers=["CPUExecutionProvider"]
    ).run(None, {"pixels": pixels})
    model = TinyViT().eval()
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(SMALL.mean).view(1, 3, 1, 1)) / torch.tensor(SMALL.std).view(1, 3, 1, 1)
    with torch.no_grad():
        tokens = model.patchify(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([model.cls.expand(3, -1, -1), tokens], dim=1)
        tokens = tokens + model.block0(tokens)
        tokens = tokens + model.block1(tokens)
    np.testing.assert_allclose(ours[0], tokens[:, 0].numpy(), atol=1e-5)


def test_layers_listed_and_unknown_tensor_refused(vit_onnx, tmp_path):
    backbone, cfg = onnx_file_cfg(vit_onnx, "vit", "image", None, SMALL)
    assert _residual_tensor(vit_onnx, 1) in backbone.layers()
    with pytest.raises(UnknownLayerError, match="no/such/tensor"):
        export_backbone(ExportConfig("vit", repo=tmp_path, layer="no/such/tensor"), backbone, cfg)
    assert not (tmp_path / "vit").exists()
    with pytest.raises(UnknownLayerError, match="no cut layer given"):
        export_backbone(ExportConfig("vit", repo=tmp_path), backbone, cfg)


def test_cut_at_an_already_pooled_tensor(vit_onnx, tmp_path):
    """Cutting a classifier's head off at its (N, C) penultimate output needs no pooling."""
    graph = onnx.load(str(vit_onnx)).graph
    gather = [n.output[0] for n in graph.node if n.op_type == "Gather"][-1]  # normed CLS, (N, C)
    backbone, cfg = onnx_file_cfg(vit_onnx, "vit", "image", gather, SMALL)
    m = export_backbone(ExportConfig("vit", repo=tmp_path), backbone, cfg).manifest
    assert (m.pooling, m.dim) == ("none", 16) and m.parity_max_abs_diff <= 1e-5


def test_bad_onnx_file_or_input_name(vit_onnx, tmp_path):
    from export.errors import ExportError

    with pytest.raises(ExportError, match="not a file"):
        onnx_file_cfg(tmp_path / "missing.onnx", "vit", "image")
    with pytest.raises(ExportError, match=r"no input 'pixels'; its inputs: \['image'\]"):
        onnx_file_cfg(vit_onnx, "vit", "pixels")
