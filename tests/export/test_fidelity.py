"""The fidelity gate: measured at export for every variant, shown to users, warned about."""

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
from server_helpers import running_server

from embedder.core.manifest import Manifest
from export.fidelity import (
    embed_fp32,
    gate,
    knn_overlap,
    probe_accuracy,
    probe_passes,
    probe_sets,
)


def test_every_variant_of_an_export_carries_its_gate(tiny_repo):
    """The gate recorded for the int8 file is that file's, measured again here on each probe
    set: its cosines to the fp32 file, its neighbours, the linear probe on both files'
    embeddings, the worst of each and the verdict."""
    from embedder.core.runtime import cpu_session

    folder = tiny_repo / "tiny_image" / "1"
    manifest = Manifest.read(folder)
    variant = manifest.variants["int8"]
    g = variant.gate
    fp32, int8 = (cpu_session(folder / f) for f in (manifest.file, variant.file))

    class Backbone:  # what probe_sets reads from an export's backbone
        modality, preprocess = "image", manifest.preprocess

    probes = {p.name: p for p in probe_sets(Backbone())}
    assert [p["probe"] for p in g["probes"]] == ["faces", "digits"]
    for row in g["probes"]:
        probe = probes[row["probe"]]
        a = np.concatenate([fp32.run(["features"], f)[0] for f in probe.feeds]).astype(np.float64)
        b = np.concatenate([int8.run(["features"], f)[0] for f in probe.feeds]).astype(np.float64)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert row["items"] == len(a) == {"faces": 200, "digits": 300}[row["probe"]]
        assert row["cosine_min"] == pytest.approx(cos.min(), abs=1e-7), row
        assert row["cosine_mean"] == pytest.approx(cos.mean(), abs=1e-7), row
        assert row["knn10_overlap"] == pytest.approx(knn_overlap(a, b)), row
        assert row["probe_accuracy_fp32"] == pytest.approx(probe_accuracy(a, probe.labels)), row
        assert row["probe_accuracy"] == pytest.approx(probe_accuracy(b, probe.labels)), row
        change = 100 * (row["probe_accuracy"] - row["probe_accuracy_fp32"])
        assert row["probe_change_points"] == pytest.approx(change, abs=1e-9), row
        assert row["probe_allowed_drop_points"] == max(0.5, 200 / row["items"]), row
    for key in ("cosine_min", "probe_change_points", "knn10_overlap"):
        assert g[key] == min(r[key] for r in g["probes"]), key
    assert g["passed"] == all(probe_passes(r) for r in g["probes"])
    assert "fidelity gate" in variant.gate_summary()


def test_a_variant_that_changes_the_embeddings_fails_and_an_identical_one_passes(tiny_repo, cnn,
                                                                                tmp_path):  # fmt: skip
    """The tiny image model against itself, and against another network with other weights."""
    from tiny_models import tiny_cnn

    from export import ExportConfig, export_backbone
    from export.generic import module_backbone_cfg

    folder = tiny_repo / "tiny_image" / "1"
    ours = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    other = tiny_cnn()
    for parameter in other.parameters():
        parameter.data.normal_(0, 0.5)
    backbone, cfg = module_backbone_cfg(other, "other", Manifest.read(folder).preprocess)
    export_backbone(ExportConfig("other", repo=tmp_path), backbone, cfg)
    theirs = ort.InferenceSession(str(tmp_path / "other/1/model.onnx"),
                                  providers=["CPUExecutionProvider"])  # fmt: skip

    class Backbone:  # what probe_sets reads from an export's backbone
        modality, preprocess = "image", Manifest.read(folder).preprocess

    probes = probe_sets(Backbone())
    embed_fp32(probes, ours)
    same = gate(probes, ours)
    assert same["passed"] and same["cosine_min"] > 0.9999 and same["knn10_overlap"] == 1.0
    changed = gate(probes, theirs)
    assert not changed["passed"] and changed["cosine_min"] < 0.99


def test_a_probe_may_lose_the_allowed_items_and_no_more():
    """Measured: EfficientNet-Lite0's int8 on the digits, two of 300 items down."""
    row = {"cosine_min": 0.9962, "knn10_overlap": 0.927, "probe_allowed_drop_points": 2 / 3,
           "probe_accuracy_fp32": 0.9033333333333333, "probe_accuracy": 0.8966666666666667,
           "probe_change_points": -0.6666666666666599}  # fmt: skip
    assert probe_passes(row)
    assert probe_passes(row | {"probe_change_points": -0.6666666666666734})  # noise the other way
    assert not probe_passes(row | {"probe_change_points": -1.0})  # three items
    assert not probe_passes(row | {"cosine_min": 0.9899})
    assert not probe_passes(row | {"knn10_overlap": 0.899})


def test_neighbour_overlap():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8))
    assert knn_overlap(x, x) == 1.0
    assert knn_overlap(x, rng.normal(size=(50, 8))) < 0.5


def test_serving_a_variant_that_failed_its_gate_warns_and_models_shows_it(tiny_repo, tmp_path,
                                                                         caplog, capsys):  # fmt: skip
    from embedder.client.cli import client_main

    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo)
    path = repo / "tiny_image" / "1" / "manifest.json"
    raw = json.loads(path.read_text())
    raw["variants"]["int8"]["gate"].update(passed=False, probe_change_points=-3.7)
    path.write_text(json.dumps(raw))
    with caplog.at_level("WARNING"), running_server(repo, cpu_precision="int8") as server:
        assert client_main(["--server", server.target, "models"]) == 0
    assert "tiny_image/1: serving the int8 file, whose fidelity gate FAILED" in caplog.text
    assert "linear probe -3.7 pt" in caplog.text
    shown = capsys.readouterr().out
    assert "tiny_image/1\timage" in shown and "fidelity gate FAILED" in shown
