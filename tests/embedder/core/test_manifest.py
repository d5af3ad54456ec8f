import json

import pytest

from embedder.core.errors import ManifestError
from embedder.core.manifest import Manifest


def test_round_trip_and_tamper_detection(cnn, tmp_path):
    from export import ExportConfig, export_backbone
    from export.generic import module_backbone_cfg

    backbone, cfg = module_backbone_cfg(cnn, "tiny")
    m = export_backbone(ExportConfig("tiny", repo=tmp_path), backbone, cfg).manifest
    folder = tmp_path / "tiny" / "1"
    assert Manifest.read(folder) == m
    with open(folder / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ManifestError, match="does not match"):
        Manifest.read(folder).verify(folder)


def test_missing_and_malformed_manifests(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        Manifest.read(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.read(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(ManifestError, match="malformed"):
        Manifest.read(tmp_path)
