"""The CUDA path on a real GPU: fp16 served, IO binding, node placement, the fallbacks.

Run with `pytest -m gpu` on a machine with an NVIDIA GPU and onnxruntime-gpu; skipped elsewhere.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from server_helpers import running_server

from embedder.client import EmbedderClient, image_item
from embedder.core.config import SessionConfig
from embedder.core.manifest import Manifest
from embedder.core.runtime import CPU, CUDA, open_session, provider_options
from embedder.engine.config import GPU_STREAMS
from protos.embedder.v1 import embedder_pb2 as pb

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        CUDA not in ort.get_available_providers(), reason="needs onnxruntime-gpu and a GPU"
    ),
]

TEXTS = [
    "a short one",
    "The striker scored twice in the second half to win the cup final for the home side.",
    " ".join(["markets fell sharply after the central bank raised rates"] * 40),  # truncated
]


@pytest.fixture(scope="module")
def gpu_repo(tiny_bert_dir, tmp_path_factory) -> Path:
    """A tiny image and a tiny text model, each with an fp16 variant."""
    from tiny_models import export_tiny_repo

    repo = tmp_path_factory.mktemp("gpu_repo")
    return export_tiny_repo(repo, tiny_bert_dir, ("fp16",), ("fp16",), max_length=64)


def session(repo: Path, name: str, provider: str):
    folder = repo / name / "1"
    return open_session(folder, Manifest.read(folder), SessionConfig(provider=provider))


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def feeds(s, batch: int) -> dict[str, np.ndarray]:
    from embedder.core.inputs import Preprocessor

    pre = Preprocessor(s.manifest, s.folder)
    if s.manifest.modality == "text":
        return pre.collate(pre.texts((TEXTS * batch)[:batch]))
    pixels = np.random.default_rng(batch).integers(0, 256, (batch, 32, 32, 3), np.uint8)
    return pre.collate(list(pixels))


@pytest.mark.parametrize("name", ["tiny_image", "tiny_text"])
def test_cuda_serves_the_fp16_file(gpu_repo, name):
    s = session(gpu_repo, name, "cuda")
    assert s.providers[0] == CUDA and s.on_gpu and s.precision == "fp16"


@pytest.mark.parametrize("name", ["tiny_image", "tiny_text"])
@pytest.mark.parametrize("batch", [1, 7, 32])
def test_fp16_on_cuda_matches_fp32_on_cpu(gpu_repo, name, batch):
    gpu, cpu = session(gpu_repo, name, "cuda"), session(gpu_repo, name, "cpu")
    inputs = feeds(cpu, batch)
    half, full = gpu.features(inputs), cpu.features(inputs)
    assert np.isfinite(half).all()
    assert cosine(half, full).min() >= 0.9999


@pytest.mark.parametrize("name", ["tiny_image", "tiny_text"])
def test_io_binding_equals_a_plain_run(gpu_repo, name):
    s = session(gpu_repo, name, "cuda")
    inputs = feeds(s, 8)
    bound = s.features(inputs)  # the IO-binding path
    plain = s.session.run(["features"], inputs)[0]
    np.testing.assert_allclose(bound, plain, rtol=0, atol=1e-6)


def test_each_image_batch_size_runs_on_its_own_cuda_session(gpu_repo):
    """onnxruntime's CUDA convolution keeps the cuDNN plan of the last input shape only: sizes
    alternating on one session re-planned on every change. Each bucket has its session."""
    folder = gpu_repo / "tiny_image" / "1"
    s = open_session(folder, Manifest.read(folder), SessionConfig(provider="cuda"), (1, 4, 8))
    assert sorted(s.bucket_sessions) == [1, 4]
    assert all(x.get_providers()[0] == CUDA for x in s.bucket_sessions.values())
    whole = s.features(feeds(s, 8))
    for n in (1, 3, 8, 2, 5, 1):  # padded to 1, 4, 8, 4, 8, 1
        part = s.features({k: v[:n] for k, v in feeds(s, 8).items()})
        assert part.shape == (n, whole.shape[1])
        assert cosine(part, whole[:n]).min() >= 0.9999


def test_compute_nodes_run_on_cuda(gpu_repo, tmp_path):
    """get_providers() lists what was registered, not where nodes run: read the profile."""
    folder = gpu_repo / "tiny_image" / "1"
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "profile")
    chain = provider_options([CUDA, CPU], folder)
    s = ort.InferenceSession(str(folder / "model.fp16.onnx"), options, providers=chain)
    s.run(["features"], {"pixels": np.zeros((4, 32, 32, 3), np.uint8)})
    events = json.loads(Path(s.end_profiling()).read_text())
    placed = {
        e["args"]["op_name"]: e["args"]["provider"]
        for e in events
        if e.get("cat") == "Node" and "provider" in e.get("args", {})
    }
    assert placed.get("Conv") == CUDA, placed
    heavy = {op: p for op, p in placed.items() if op in ("Conv", "MatMul", "Gemm")}
    assert set(heavy.values()) == {CUDA}, placed


def test_the_server_reports_cuda_and_serves_fp16(gpu_repo):
    cpu = session(gpu_repo, "tiny_image", "cpu")
    pixels = np.random.default_rng(3).integers(0, 256, (16, 32, 32, 3), np.uint8)
    with running_server(gpu_repo, provider="cuda") as server, EmbedderClient(server.target) as c:
        info = c.stub.GetModel(pb.GetModelRequest(model="tiny_image"))
        assert list(info.providers)[0] == CUDA and info.precision == "fp16"
        assert info.batching.inference_streams == GPU_STREAMS  # copies overlap compute
        got = c.embed(pb.EmbedRequest(model="tiny_image", items=[image_item(p) for p in pixels]))
    assert cosine(got.embeddings, cpu.features({"pixels": pixels})).min() >= 0.9999


def test_batch_export_on_the_gpu_caches_the_fp16_file(gpu_repo, tmp_path):
    from PIL import Image

    from embedder.cache import load_features, read_identity
    from embedder.core.sources import image_folder
    from embedder.features import FeaturesConfig, export_features

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), np.uint8)).save(photos / f"{i}.png")
    runs, summaries = {}, {}
    for provider in ("auto", "cpu"):
        cfg = FeaturesConfig(repo=gpu_repo, model="tiny_image", cache=tmp_path / provider,
                                provider=provider, progress=False)  # fmt: skip
        summaries[provider] = export_features(image_folder(photos), cfg)
        runs[provider] = load_features(summaries[provider].run_file)
    manifest = Manifest.read(gpu_repo / "tiny_image" / "1")
    auto, cpu = (read_identity(summaries[p].dataset) for p in ("auto", "cpu"))
    assert auto["model_sha256"] == manifest.variants["fp16"].sha256
    assert cpu["model_sha256"] == manifest.sha256
    assert list(runs["auto"].keys) == list(runs["cpu"].keys)
    assert cosine(runs["auto"].X, runs["cpu"].X).min() >= 0.9999


FALLBACK = textwrap.dedent(
    """
    import logging, sys
    from pathlib import Path
    from embedder.core.config import SessionConfig
    from embedder.core.manifest import Manifest
    from embedder.core.runtime import ProviderError, open_session
    logging.basicConfig(level=logging.WARNING)
    folder = Path(sys.argv[1])
    manifest = Manifest.read(folder)
    try:
        open_session(folder, manifest, SessionConfig(provider="cuda"))
        print("cuda: served")
    except ProviderError as exc:
        print("cuda: refused:", exc)
    s = open_session(folder, manifest, SessionConfig(provider="auto"))
    print("auto:", s.providers[0], s.precision)
    """
)


def test_without_a_visible_gpu_cuda_refuses_and_auto_announces_the_cpu(gpu_repo):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    folder = gpu_repo / "tiny_image" / "1"
    done = subprocess.run([sys.executable, "-c", FALLBACK, str(folder)], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert "cuda: refused: tiny_image: cuda was requested" in done.stdout, done.stdout + done.stderr
    assert "auto: CPUExecutionProvider fp32" in done.stdout, done.stdout + done.stderr
    assert "did not start" in done.stderr and "serving fp32 on the CPU" in done.stderr
