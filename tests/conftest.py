"""Shared fixtures: tiny models built here (no weights), and the real defaults exported once."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:  # torch comes with the export extra: the serving tests run without it
    from torch import nn


@pytest.fixture(scope="session")
def default_repo(tmp_path_factory) -> Path:
    """Every default backbone exported once into a session-wide repository: fp32, and MiniLM's
    int8 (tests/export/test_defaults.py checks its gate; EfficientNet-Lite0's, a minute and a
    half, is a `long` test there). fp16, and the int8 recipes that fail their gates, are left
    to the tiny models' tests: they cost minutes here."""
    from export import ExportConfig, export_backbone, list_backbones

    repo = tmp_path_factory.mktemp("models")
    for name in list_backbones(defaults_only=True):
        variants = ("int8",) if name == "minilm_l6" else ()
        export_backbone(ExportConfig(name, repo=repo, variants=variants))
    return repo


@pytest.fixture
def cnn() -> nn.Sequential:
    from tiny_models import tiny_cnn

    return tiny_cnn()


@pytest.fixture
def vit_onnx(tmp_path) -> Path:
    from tiny_models import export_tiny_vit

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


@pytest.fixture(scope="session")
def layers_repo(tiny_repo, tmp_path_factory) -> Path:
    """tiny_repo's models, and two tiny image models exported at three layers each
    (tiny_image_layers: tiny_image's weights; tiny_wide_layers: 40 px, other weights)."""
    import shutil

    from tiny_models import export_layered_models

    repo = tmp_path_factory.mktemp("layers") / "models"
    shutil.copytree(tiny_repo, repo)
    export_layered_models(repo)
    return repo


@pytest.fixture(scope="module")
def tiny_server(tiny_repo):
    from server_helpers import running_server

    with running_server(tiny_repo) as server:
        yield server


@pytest.fixture(scope="session")
def trained(tiny_repo, tmp_path_factory):
    """Three colour classes as PNG files, embedded by tiny_image, two heads trained on them."""
    from PIL import Image

    from embedder.cache import load_features
    from embedder.features import FeaturesConfig, export_features, image_folder
    from heads import HeadConfig, train_head
    from heads.persist import save_head

    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for label, colour in (
        ("red", (200, 30, 30)),
        ("green", (30, 200, 30)),
        ("blue", (30, 30, 200)),
    ):
        (root / "images" / label).mkdir(parents=True)
        for i in range(12):
            pixels = np.clip(np.array(colour) + rng.integers(-60, 60, (40, 40, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / "images" / label / f"{i}.png")
    summary = export_features(
        image_folder(root / "images", True),
        FeaturesConfig(repo=tiny_repo, model="tiny_image", cache=root / "cache", progress=False),
    )
    features = load_features(summary.dataset)
    backbone = {"model": "tiny_image", "version": "1", "digest": summary.dataset.name}
    heads = {}
    for kind in ("logreg", "linear_svc"):
        head = train_head(features.X, features.y, HeadConfig(kind=kind, folds=3))
        heads[kind] = save_head(head, root / kind, backbone, features.X.shape[1])
    return root, summary.dataset, heads
