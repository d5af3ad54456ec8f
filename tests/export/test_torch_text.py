"""Text encoders from a local Hugging Face directory, on a tiny random BERT."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tiny_models import optimized_op_types

from embedder.core.manifest import Manifest
from embedder.core.preprocess import TextTokenizer
from export import ExportConfig, export_backbone
from export.errors import MissingDependencyError
from export.generic import hf_encoder_cfg


def test_manifest_and_tokenizer_copied(tiny_bert_repo):
    folder = tiny_bert_repo / "tinybert" / "1"
    m = Manifest.read(folder)
    m.verify(folder)
    assert (folder / "tokenizer.json").is_file()
    assert (m.modality, m.dim, m.normalized) == ("text", 32, True)
    assert m.pooling == "mean-over-attention-mask"
    assert [i.name for i in m.inputs] == ["input_ids", "attention_mask"]
    assert m.preprocess.max_length == 16
    assert m.parity_max_abs_diff <= 1e-6  # the export refuses over 1e-4; reads 6e-8
    assert m.variants["int8"].cosine_to_fp32_min > 0.999  # reads 0.99999997


def test_served_graph_fuses_gelu(tiny_bert_repo, tmp_path):
    """The dynamo exporter's GELU is regrouped at export (export/graph_forms.py) into the form
    onnxruntime fuses: one op per FFN activation in the graph the CPU runs, fp32 and int8."""
    folder = tiny_bert_repo / "tinybert" / "1"
    for file in ("model.onnx", "model.int8.onnx"):
        ops = optimized_op_types(folder / file, tmp_path)
        assert ops["Erf"] == 0 and ops["BiasGelu"] + ops["Gelu"] == 2, (file, ops)  # 2 layers


@pytest.mark.parametrize(
    "texts", [["the cat"], ["the cat sat on the mat", "dog", "a cup of coffee"]]
)
def test_dynamic_batch_and_sequence_match_torch(tiny_bert_repo, tiny_bert_dir, texts):
    from transformers import AutoModel

    folder = tiny_bert_repo / "tinybert" / "1"
    m = Manifest.read(folder)
    inputs = TextTokenizer(folder / "tokenizer.json", m.preprocess)(texts)
    ours = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        ["features"], inputs
    )[0]
    model = AutoModel.from_pretrained(str(tiny_bert_dir)).eval()
    with torch.no_grad():
        ids, mask = (torch.from_numpy(inputs[k]) for k in ("input_ids", "attention_mask"))
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        expected = torch.nn.functional.normalize(pooled, dim=1).numpy()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)  # reads 3-6e-8
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)


def test_padding_does_not_change_an_embedding(tiny_bert_repo):
    folder = tiny_bert_repo / "tinybert" / "1"
    tok = TextTokenizer(folder / "tokenizer.json", Manifest.read(folder).preprocess)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    alone = session.run(["features"], tok(["dog"]))[0]
    padded = session.run(["features"], tok(["dog", "the cat sat on the mat"]))[0]
    np.testing.assert_allclose(alone[0], padded[0], atol=1e-5)


def test_cut_at_intermediate_layer(tiny_bert_dir, tmp_path):
    backbone, cfg = hf_encoder_cfg(tiny_bert_dir, "tinybert")
    assert backbone.layers() == ["embeddings", "encoder.layer.0", "encoder.layer.1"]
    m = export_backbone(
        ExportConfig("tinybert", repo=tmp_path, layer="encoder.layer.0"), backbone, cfg
    ).manifest
    assert m.layer == "encoder.layer.0" and m.parity_max_abs_diff <= 1e-6  # reads 6e-8


def test_directory_without_tokenizer_json_is_refused(tiny_bert_dir, tmp_path):
    for f in tiny_bert_dir.iterdir():
        if f.name != "tokenizer.json":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    with pytest.raises(MissingDependencyError, match="tokenizer.json"):
        hf_encoder_cfg(tmp_path, "x")
