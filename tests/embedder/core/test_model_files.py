"""Every file a model is served with is verified at load; one bad file refuses that model alone."""

import json
import shutil

import pytest
from server_helpers import running_server

from embedder.cache import CacheIdentity
from embedder.client import EmbedderClient
from embedder.core.manifest import Manifest, sha256_file


@pytest.fixture
def repo(tiny_repo, tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(tiny_repo, copy)
    return copy


def test_export_records_the_tokenizer_sha256(tiny_repo):
    folder = tiny_repo / "tiny_text" / "1"
    manifest = Manifest.read(folder)
    assert manifest.preprocess.tokenizer_sha256 == sha256_file(folder / "tokenizer.json")


def test_an_edited_tokenizer_is_refused_and_the_rest_served(repo, caplog):
    """The campaign's edit: lowercasing switched off, served silently (cosine 0.07)."""
    path = repo / "tiny_text" / "1" / "tokenizer.json"
    tokenizer = json.loads(path.read_text())
    tokenizer["normalizer"]["lowercase"] = False
    path.write_text(json.dumps(tokenizer))
    with caplog.at_level("ERROR"), running_server(repo) as server:
        with EmbedderClient(server.target) as client:
            assert {m.name for m in client.list_models()} == {"tiny_image"}
        assert "tiny_text/1" in server.server.engine.repository.refused
    assert "tokenizer.json sha256" in caplog.text


def test_a_corrupt_tokenizer_refuses_its_model_not_the_server(repo, caplog):
    folder = repo / "tiny_text" / "1"
    (folder / "tokenizer.json").write_text("{not json")
    manifest = json.loads((folder / "manifest.json").read_text())  # even with a matching digest
    manifest["preprocess"]["tokenizer_sha256"] = sha256_file(folder / "tokenizer.json")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level("ERROR"), running_server(repo) as server:
        with EmbedderClient(server.target) as client:
            assert {m.name for m in client.list_models()} == {"tiny_image"}
    assert "refusing model tiny_text/1" in caplog.text and "tokenizer.json" in caplog.text


def test_a_manifest_without_the_tokenizer_digest_is_refused(repo, caplog):
    folder = repo / "tiny_text" / "1"
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["preprocess"]["tokenizer_sha256"]  # exported before tokenizers were hashed
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level("ERROR"), running_server(repo) as server:
        assert "tiny_text/1" in server.server.engine.repository.refused
    assert "re-export" in caplog.text


def test_a_corrupt_int8_file_does_not_stop_fp32_serving(repo):
    with open(repo / "tiny_image" / "1" / "model.int8.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"corrupt")
    with running_server(repo) as server, EmbedderClient(server.target) as client:
        assert {m.name for m in client.list_models()} == {"tiny_image", "tiny_text"}
    with running_server(repo, cpu_precision="int8") as server:  # asked for: refused
        assert "tiny_image/1" in server.server.engine.repository.refused


def test_the_cache_identity_changes_with_the_tokenizer(tiny_repo):
    from dataclasses import replace

    manifest = Manifest.read(tiny_repo / "tiny_text" / "1")
    other = replace(manifest, preprocess=replace(manifest.preprocess, tokenizer_sha256="0" * 64))
    assert CacheIdentity.of(manifest, "a").digest != CacheIdentity.of(other, "a").digest
