"""Shared fixtures: tiny models built here (no weights), and the real defaults exported once."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_models import export_tiny_vit, tiny_cnn
from torch import nn


@pytest.fixture(scope="session")
def default_repo(tmp_path_factory) -> Path:
    """Every default backbone exported once (fp32, fp16, int8) into a session-wide repository."""
    from export import ExportConfig, export_backbone, list_backbones

    repo = tmp_path_factory.mktemp("models")
    for name in list_backbones(defaults_only=True):
        export_backbone(ExportConfig(name, repo=repo, variants=("fp16", "int8")))
    return repo


@pytest.fixture
def cnn() -> nn.Sequential:
    return tiny_cnn()


@pytest.fixture
def vit_onnx(tmp_path) -> Path:
    path = tmp_path / "tiny_vit.onnx"
    export_tiny_vit(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    from tiny_models import save_tiny_bert

    folder = tmp_path_factory.mktemp("tiny_bert")
    save_tiny_bert(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_repo(tiny_bert_dir, tmp_path_factory) -> Path:
    """The tiny BERT exported once through the generic Hugging Face path."""
    from export import ExportConfig, export_backbone
    from export.generic import hf_encoder_cfg

    repo = tmp_path_factory.mktemp("text_repo")
    backbone, cfg = hf_encoder_cfg(tiny_bert_dir, "tinybert", max_length=16)
    export_backbone(ExportConfig("tinybert", repo=repo, variants=("int8",)), backbone, cfg)
    return repo


@pytest.fixture(scope="session")
def tiny_repo(tiny_bert_dir, tmp_path_factory) -> Path:
    """A repository with a tiny image model (32 px) and a tiny text model, fp32 and int8."""
    from tiny_models import export_tiny_repo

    return export_tiny_repo(tmp_path_factory.mktemp("tiny_repo"), tiny_bert_dir, ("int8",))


@pytest.fixture(scope="module")
def tiny_server(tiny_repo):
    from server_helpers import running_server

    with running_server(tiny_repo) as server:
        yield server
