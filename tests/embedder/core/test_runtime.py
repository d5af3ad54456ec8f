"""Provider selection and the file served for it; the GPU path itself needs a GPU machine."""

import onnxruntime as ort
import pytest

from embedder.core.config import SessionConfig
from embedder.core.manifest import Manifest
from embedder.core.runtime import (
    CPU,
    CUDA,
    TENSORRT,
    ProviderError,
    model_file,
    open_session,
    provider_chain,
)


@pytest.mark.parametrize(
    "requested,available,chain",
    [
        ("cpu", [TENSORRT, CUDA, CPU], [CPU]),
        ("auto", [CPU], [CPU]),
        ("auto", [CUDA, CPU], [CUDA, CPU]),
        ("auto", [TENSORRT, CUDA, CPU], [CUDA, CPU]),  # TensorRT only when asked for
        ("cuda", [TENSORRT, CUDA, CPU], [CUDA, CPU]),
        ("tensorrt", [TENSORRT, CUDA, CPU], [TENSORRT, CUDA, CPU]),
    ],
)
def test_provider_chain(requested, available, chain):
    assert provider_chain(requested, available) == chain


@pytest.mark.parametrize("requested,available", [("cuda", [CPU]), ("tensorrt", [TENSORRT, CPU])])
def test_a_gpu_provider_that_is_missing_is_refused(requested, available):
    with pytest.raises(ProviderError, match="install onnxruntime-gpu"):
        provider_chain(requested, available)


def test_file_per_provider_and_precision(tiny_repo):
    manifest = Manifest.read(tiny_repo / "tiny_image" / "1")
    int8 = manifest.variants["int8"].file
    assert model_file(manifest, on_gpu=False, cpu_precision="fp32") == (manifest.file, "fp32")
    assert model_file(manifest, on_gpu=False, cpu_precision="int8") == (int8, "int8")
    # No fp16 file exported: a GPU serves the fp32 one rather than failing.
    assert "fp16" not in manifest.variants
    assert model_file(manifest, on_gpu=True, cpu_precision="int8") == (manifest.file, "fp32")


def test_fp16_file_chosen_on_a_gpu(default_repo):
    manifest = Manifest.read(default_repo / "minilm_l6" / "1")
    assert model_file(manifest, on_gpu=True, cpu_precision="fp32") == (
        manifest.variants["fp16"].file,
        "fp16",
    )


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="this machine has CUDA")
def test_cuda_requested_without_it_refuses_to_start(tiny_repo):
    folder = tiny_repo / "tiny_image" / "1"
    with pytest.raises(ProviderError, match="'cuda' requested"):
        open_session(folder, Manifest.read(folder), SessionConfig(provider="cuda"))
    auto = open_session(folder, Manifest.read(folder), SessionConfig(provider="auto"))
    assert auto.providers == [CPU] and not auto.on_gpu and auto.precision == "fp32"


def test_in_chunks_runs_consecutive_slices(tiny_repo):
    import numpy as np

    from embedder.core.batch_parts import in_chunks

    folder = tiny_repo / "tiny_image" / "1"
    session = open_session(folder, Manifest.read(folder), SessionConfig(provider="cpu"))
    sizes = []

    def run(feeds):
        sizes.append(len(feeds["pixels"]))
        return session.run(feeds)

    pixels = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), np.uint8)
    out = in_chunks(run, 4)({"pixels": pixels})
    assert sizes == [4, 4, 2]
    np.testing.assert_allclose(out, session.run({"pixels": pixels}), atol=1e-5)


def test_gpu_batch_buckets_are_powers_of_two_up_to_the_largest_batch():
    from embedder.core.runtime import batch_buckets

    assert batch_buckets(64) == (1, 2, 4, 8, 16, 32, 64)
    assert batch_buckets(48) == (1, 2, 4, 8, 16, 32, 48)
    assert batch_buckets(1) == (1,)


def test_a_padded_batch_repeats_its_last_row():
    import numpy as np

    from embedder.core.runtime import _pad_rows

    feeds = {"input_ids": np.arange(6).reshape(3, 2), "attention_mask": np.ones((3, 2), int)}
    padded = _pad_rows(feeds, 5)
    assert padded["input_ids"].tolist() == [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]]
    assert padded["attention_mask"].shape == (5, 2)
