"""The real default backbones through gRPC equal their in-process sessions within 1e-5."""

import io

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from server_helpers import running_server

from embedder.client import EmbedderClient
from embedder.core.manifest import Manifest
from embedder.core.preprocess import TextTokenizer, preprocess_image_bytes
from export.samples import SAMPLE_SENTENCES, sample_photos

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(default_repo):
    with running_server(default_repo) as s, EmbedderClient(s.target) as client:
        yield client


def _jpegs() -> list[bytes]:
    out = []
    for photo in sample_photos().values():
        buf = io.BytesIO()
        Image.fromarray(photo).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _session(repo, name):
    return ort.InferenceSession(
        str(repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_lite0", "dinov2_small"])
def test_image_models_equal_in_process(server, default_repo, name):
    jpegs = _jpegs()
    cfg = Manifest.read(default_repo / name / "1").preprocess
    pixels = np.stack([preprocess_image_bytes(b, cfg) for b in jpegs])
    expected = _session(default_repo, name).run(["features"], {"pixels": pixels})[0]
    np.testing.assert_allclose(server.embed_images(name, jpegs), expected, atol=1e-5)


def test_minilm_equals_in_process(server, default_repo):
    folder = default_repo / "minilm_l6" / "1"
    feeds = TextTokenizer(folder / "tokenizer.json", Manifest.read(folder).preprocess)(
        list(SAMPLE_SENTENCES)
    )
    expected = _session(default_repo, "minilm_l6").run(["features"], feeds)[0]
    np.testing.assert_allclose(
        server.embed_texts("minilm_l6", list(SAMPLE_SENTENCES)), expected, atol=1e-5
    )


def test_all_defaults_listed_with_cpu_provider(server):
    models = {m.name: m for m in server.list_models()}
    assert set(models) == {"mobilenet_v2", "efficientnet_lite0", "minilm_l6", "dinov2_small"}
    assert all(m.providers == ["CPUExecutionProvider"] for m in models.values())
