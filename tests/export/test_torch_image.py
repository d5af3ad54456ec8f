"""Export machinery on a tiny CNN: parity, cut layers, dynamic batch, manifest, variants."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from embedder.core.manifest import ImagePreprocess, Manifest
from export import ExportConfig, export_backbone
from export.errors import ParityError, UnknownLayerError, VersionExistsError
from export.generic import module_backbone_cfg
from export.samples import sample_pixels

SMALL = ImagePreprocess(size=(32, 32), resize_shorter=36)


def _export(cnn, repo: Path, **kw):
    backbone, cfg = module_backbone_cfg(cnn, "tiny", SMALL)
    return export_backbone(ExportConfig("tiny", repo=repo, **kw), backbone, cfg)


def test_export_writes_model_and_manifest_with_parity(cnn, tmp_path):
    result = _export(cnn, tmp_path)
    folder = tmp_path / "tiny" / "1"
    assert result.folder == folder
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "model.onnx"]
    m = Manifest.read(folder)
    m.verify(folder)
    assert (m.modality, m.dim, m.layer, m.pooling) == ("image", 24, "2", "global-average")
    assert m.inputs[0].name == "pixels" and m.inputs[0].dtype == "uint8"
    assert m.inputs[0].shape == ("batch", 32, 32, 3)
    # The export refuses over 1e-4; the tiny CNN reads 3e-8 (one float32 step of its features).
    assert 0 <= m.parity_max_abs_diff <= 1e-6
    assert m.source.package == "user-supplied"


def test_graph_normalises_inside_and_matches_torch(cnn, tmp_path):
    """Feeding raw uint8 pixels to the graph equals torch on mean/std-normalised floats."""
    import torch

    _export(cnn, tmp_path)
    session = ort.InferenceSession(
        str(tmp_path / "tiny/1/model.onnx"), providers=["CPUExecutionProvider"]
    )
    _, pixels = sample_pixels(SMALL)
    ours = session.run(["features"], {"pixels": pixels})[0]
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(SMALL.mean).view(1, 3, 1, 1)
    std = torch.tensor(SMALL.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = cnn((x - mean) / std).mean((2, 3)).numpy()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)  # reads 4e-8


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_dynamic_batch_axis(cnn, tmp_path, batch):
    _export(cnn, tmp_path)
    session = ort.InferenceSession(
        str(tmp_path / "tiny/1/model.onnx"), providers=["CPUExecutionProvider"]
    )
    pixels = np.random.default_rng(1).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    assert session.run(["features"], {"pixels": pixels})[0].shape == (batch, 24)


def test_cut_at_intermediate_layer(cnn, tmp_path):
    backbone, _ = module_backbone_cfg(cnn, "tiny", SMALL)
    assert backbone.layers() == ["0", "1", "2"]
    result = _export(cnn, tmp_path, layer="1", output_name="tiny_l1")
    assert (result.manifest.layer, result.manifest.dim) == ("1", 16)
    assert (tmp_path / "tiny_l1" / "1" / "model.onnx").is_file()


def test_unknown_layer_lists_valid_layers(cnn, tmp_path):
    with pytest.raises(UnknownLayerError, match=r"'nope'.*0, 1, 2"):
        _export(cnn, tmp_path, layer="nope")
    assert not (tmp_path / "tiny" / "1").exists()


def test_existing_version_refused_then_overwritten(cnn, tmp_path):
    first = _export(cnn, tmp_path)
    with pytest.raises(VersionExistsError, match="--overwrite"):
        _export(cnn, tmp_path)
    second = _export(cnn, tmp_path, overwrite=True)
    assert second.manifest.exported_at >= first.manifest.exported_at
    assert [p.name for p in (tmp_path / "tiny").iterdir()] == ["1"]  # no leftovers


def test_failed_parity_leaves_nothing_behind(cnn, tmp_path):
    with pytest.raises(ParityError, match="nothing was written"):
        _export(cnn, tmp_path, parity_tolerance=-1.0)  # a tolerance no export can meet
    assert list((tmp_path / "tiny").iterdir()) == []


def test_failed_overwrite_keeps_the_old_version(cnn, tmp_path):
    _export(cnn, tmp_path)
    before = (tmp_path / "tiny/1/model.onnx").read_bytes()
    with pytest.raises(ParityError):
        _export(cnn, tmp_path, parity_tolerance=-1.0, overwrite=True)
    assert (tmp_path / "tiny/1/model.onnx").read_bytes() == before
    Manifest.read(tmp_path / "tiny/1").verify(tmp_path / "tiny/1")


def test_variants_recorded_with_cosine(cnn, tmp_path):
    m = _export(cnn, tmp_path, variants=("fp16", "int8")).manifest
    assert set(m.variants) == {"fp16", "int8"}
    assert m.variants["fp16"].cosine_to_fp32_min > 0.999
    # The tiny CNN's int8 reads 0.999998 (its first convolution kept fp32, rounding calibrated).
    assert 0.999 < m.variants["int8"].cosine_to_fp32_min <= 1.0 + 1e-9
    Manifest.read(tmp_path / "tiny/1").verify(tmp_path / "tiny/1")
    for v in m.variants.values():
        session = ort.InferenceSession(
            str(tmp_path / "tiny/1" / v.file), providers=["CPUExecutionProvider"]
        )
        assert session.get_inputs()[0].name == "pixels"


def test_export_keeps_torchs_internal_notes_off_the_console(cnn, tmp_path, caplog):
    import warnings

    from export import ExportConfig, export_backbone
    from export.generic import module_backbone_cfg

    backbone, cfg = module_backbone_cfg(cnn, "quiet")
    with warnings.catch_warnings(record=True) as seen, caplog.at_level("WARNING"):
        warnings.simplefilter("always")
        export_backbone(ExportConfig("quiet", repo=tmp_path), backbone, cfg)
    noise = [w for w in seen if issubclass(w.category, FutureWarning | UserWarning)]
    assert noise == [], [str(w.message) for w in noise]
    assert "torchvision is not installed" not in caplog.text
