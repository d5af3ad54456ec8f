"""Provider selection and the file served for it; the GPU path itself needs a GPU machine."""

import numpy as np
import onnxruntime as ort
import pytest
from tiny_models import optimized_op_types

from embedder.core.config import SessionConfig
from embedder.core.manifest import ImagePreprocess, Manifest
from embedder.core.runtime import (
    CPU,
    CUDA,
    TENSORRT,
    ProviderError,
    cpu_session,
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


def test_fp16_file_chosen_on_a_gpu(cnn, tmp_path):
    """With an fp16 file exported, a GPU serves it whatever the CPU precision; a CPU never does."""
    from export import ExportConfig, export_backbone
    from export.generic import module_backbone_cfg

    backbone, cfg = module_backbone_cfg(cnn, "tiny", ImagePreprocess((32, 32), 36))
    config = ExportConfig("tiny", repo=tmp_path, variants=("fp16",))
    manifest = export_backbone(config, backbone, cfg).manifest
    fp16 = manifest.variants["fp16"].file
    assert fp16 != manifest.file and (tmp_path / "tiny" / "1" / fp16).is_file()
    for precision in ("fp32", "int8"):
        assert model_file(manifest, on_gpu=True, cpu_precision=precision) == (fp16, "fp16")
        cpu = model_file(manifest, on_gpu=False, cpu_precision=precision)
        assert cpu == (manifest.file, "fp32")  # no int8 file exported: fp32


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


def residual_layer_norm_model() -> bytes:
    """(x + bias) + skip, then LayerNormalization: the pattern onnxruntime fuses into
    SkipLayerNormalization."""
    from onnx import TensorProto, helper, numpy_helper

    hidden = 16
    inits = [numpy_helper.from_array(np.full(hidden, v, np.float32), n)
             for n, v in (("bias", 0.1), ("gamma", 1.0), ("beta", 0.0))]  # fmt: skip
    nodes = [
        helper.make_node("Add", ["x", "bias"], ["biased"]),
        helper.make_node("Add", ["biased", "skip"], ["summed"]),
        helper.make_node("LayerNormalization", ["summed", "gamma", "beta"], ["y"], axis=-1),
    ]
    spec = ["B", "S", hidden]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, spec) for n in ("x", "skip")]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, spec)
    graph = helper.make_graph(nodes, "residual_ln", inputs, [output], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


def test_cpu_sessions_leave_skip_layer_norm_unfused(tmp_path):
    model = residual_layer_norm_model()
    assert optimized_op_types(model, tmp_path, unfused=False)["SkipLayerNormalization"] == 1
    ops = optimized_op_types(model, tmp_path)
    assert (ops["SkipLayerNormalization"], ops["LayerNormalization"]) == (0, 1)
    rng = np.random.default_rng(0)
    x, skip = rng.normal(size=(2, 2, 3, 16)).astype(np.float32)
    y = cpu_session(model).run(["y"], {"x": x, "skip": skip})[0]
    summed = x + 0.1 + skip
    mean, var = summed.mean(-1, keepdims=True), summed.var(-1, keepdims=True)
    np.testing.assert_allclose(y, (summed - mean) / np.sqrt(var + 1e-5), atol=1e-5)


@pytest.fixture
def cpu_sessions_built(monkeypatch) -> list:
    """The models `cpu_session` is called for, in order (it still builds them)."""
    import embedder.core.runtime as runtime

    built, real = [], runtime.cpu_session
    monkeypatch.setattr(runtime, "cpu_session",
                        lambda model, options=None: built.append(model) or real(model, options))  # fmt: skip
    return built


def test_the_server_builds_its_cpu_session_with_cpu_session(tiny_bert_repo, cpu_sessions_built):
    folder = tiny_bert_repo / "tinybert" / "1"
    manifest = Manifest.read(folder)
    model = open_session(folder, manifest, SessionConfig(provider="cpu", cpu_precision="int8"))
    assert (model.providers, model.precision) == ([CPU], "int8")
    assert cpu_sessions_built == [folder / manifest.variants["int8"].file]


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="this machine has CUDA")
def test_a_gpu_that_does_not_start_leaves_a_cpu_session(tiny_bert_repo, cpu_sessions_built,
                                                         monkeypatch, caplog):  # fmt: skip
    """onnxruntime without CUDA skips a CUDA provider it is given, as a GPU that fails does."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    folder = tiny_bert_repo / "tinybert" / "1"
    manifest = Manifest.read(folder)
    model = open_session(folder, manifest, SessionConfig(provider="auto", cpu_precision="int8"))
    assert (model.providers, model.precision) == ([CPU], "int8")
    assert cpu_sessions_built == [folder / manifest.variants["int8"].file]
    assert "did not start" in caplog.text and "serving int8 on the CPU" in caplog.text
