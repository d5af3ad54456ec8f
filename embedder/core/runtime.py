"""onnxruntime sessions: provider selection, the file to serve for it, and the run call.

The provider really in use is read back from `session.get_providers()`: onnxruntime-gpu falls
back to CPU silently when CUDA cannot start, and a server must not claim a GPU it is not using.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedder.core.batch_parts import CPU_BATCH_TOKENS, by_token_budget
from embedder.core.config import Provider, SessionConfig
from embedder.core.errors import EmbedderError
from embedder.core.manifest import Manifest

log = logging.getLogger(__name__)

CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


# onnxruntime 1.32's CPU kernel for SkipLayerNormalization runs 5x slower than the Add, Add and
# LayerNormalization it fuses (32 x 128 x 384, either thread count): left unfused on a CPU, MiniLM
# ran 8 % faster in fp32 and 17 % in int8 (README, "The graph form"). GPUs keep the fusion.
# onnxruntime accepts unknown names here silently: test_runtime checks that this one works.
CPU_UNFUSED = ("SkipLayerNormFusion",)


def cpu_session(model: Path | bytes, options=None):
    """An onnxruntime CPU session built as the server builds one, so that what export and the
    benchmarks measure is what is served. `model`: a path or a serialised ModelProto."""
    import onnxruntime as ort

    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=[CPU],
                                disabled_optimizers=list(CPU_UNFUSED))  # fmt: skip


class ProviderError(EmbedderError):
    """The requested execution provider is not available or did not start."""


def provider_chain(requested: Provider, available: list[str]) -> list[str]:
    if requested == "cpu":
        return [CPU]
    chain = [
        p for p in (TENSORRT, CUDA) if p in available and (p != TENSORRT or requested == "tensorrt")
    ]
    if requested in ("cuda", "tensorrt") and CUDA not in chain:
        raise ProviderError(
            f"provider {requested!r} requested but onnxruntime offers {available}; install "
            "onnxruntime-gpu[cuda,cudnn] (and remove onnxruntime) on a machine with an NVIDIA GPU"
        )
    return [*chain, CPU]


def gpu_planned(provider: Provider) -> bool:
    """Whether a session for `provider` is planned on a GPU by this onnxruntime (it may still
    fall back to the CPU when the GPU does not start; `ModelSession.on_gpu` says what runs)."""
    import onnxruntime as ort

    return provider_chain(provider, ort.get_available_providers())[0] != CPU


def model_file(manifest: Manifest, on_gpu: bool, cpu_precision: str) -> tuple[str, str]:
    """(file, precision): fp16 on a GPU when exported, int8 on CPU when asked and exported."""
    wanted = "fp16" if on_gpu else cpu_precision
    if wanted in manifest.variants:
        return manifest.variants[wanted].file, wanted
    return manifest.file, "fp32"


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """Powers of two below `max_batch`, then `max_batch`: the batch shapes a GPU image model
    runs (see ModelSession.batch_buckets)."""
    sizes = [1 << i for i in range(max_batch.bit_length()) if 1 << i < max_batch]
    return (*sizes, max_batch)


def _pad_rows(feeds: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Each input grown to `size` rows by repeating its last row (a valid input)."""
    return {k: np.concatenate([v, np.repeat(v[-1:], size - len(v), axis=0)])
            for k, v in feeds.items()}  # fmt: skip


@dataclass(eq=False)  # identity-hashed: the service keys its per-model state by session
class ModelSession:
    manifest: Manifest
    folder: Path
    session: object  # onnxruntime.InferenceSession
    providers: list[str]
    precision: str
    # On a GPU, an image model's batch is padded up to the next of these sizes, and each size
    # runs on its own session. onnxruntime's CUDA convolution keeps the cuDNN plan of the last
    # input shape only, and building one took 0.6-4 s per MobileNetV2 batch size on an H200:
    # one session fed alternating sizes re-planned on every change (64 single-image clients:
    # 18 img/s, 2.2 s per call). One session per size sees one shape; all warm up at start.
    batch_buckets: tuple[int, ...] = ()
    bucket_sessions: dict[int, object] = field(default_factory=dict)
    # A text model's batch runs in parts of at most this many padded tokens (batch_parts.py).
    max_batch_tokens: int = 0

    @property
    def on_gpu(self) -> bool:
        return self.providers[0] in (CUDA, TENSORRT)

    @property
    def output_names(self) -> list[str]:
        """features, then each published head's scores and its OOD score (manifest order)."""
        names = ["features"]
        for head in self.manifest.heads.values():
            names += [head.scores_output, *([head.ood_output] if head.ood_output else [])]
        return names

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """(N, dim) features, with each head's (N, classes) scores appended as columns."""
        outputs = self._outputs(self.output_names, feeds)
        if len(outputs) == 1:
            return outputs[0]
        return np.hstack([o.reshape(len(o), -1).astype(np.float32) for o in outputs])

    def features(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """(N, dim) features alone: a published model's head scores are not computed."""
        return self._outputs(["features"], feeds)[0]

    def layer_features(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Each cut point's features (manifest.feature_outputs(), shallowest first), from one
        pass; [features] for a model exported at one layer."""
        return self._outputs([o.output for o in self.manifest.feature_outputs()], feeds)

    def warm_up(self, feeds: dict[str, np.ndarray]) -> None:
        """Run once at every bucket size (or as given), so no live request pays a first run."""
        for size in self.batch_buckets or (len(next(iter(feeds.values()))),):
            self._outputs(self.output_names, _pad_rows({k: v[:1] for k, v in feeds.items()}, size))

    def _outputs(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.max_batch_tokens and "attention_mask" in feeds:
            return by_token_budget(lambda part: self._run(names, part), feeds,
                                   self.max_batch_tokens)  # fmt: skip
        return self._run(names, feeds)

    def _run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if not self.on_gpu:
            return self.session.run(names, feeds)
        n = len(next(iter(feeds.values())))
        size = next((b for b in self.batch_buckets if b >= n), n)
        if size > n:
            feeds = _pad_rows(feeds, size)
        session = self.bucket_sessions.get(size, self.session)
        binding = session.io_binding()  # IO binding: inputs copied once, outputs fetched once
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in names:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        return [out[:n] for out in binding.copy_outputs_to_cpu()]


def provider_options(chain: list[str], folder: Path) -> list[tuple[str, dict[str, str]]]:
    """Each provider with the options a server wants from it.

    CUDA: cuDNN picks convolution algorithms by heuristics (the default, an exhaustive search,
    would run on a live request for every new batch size); fp32 stays fp32 (no TF32), so a model
    served without an fp16 variant matches its export. TensorRT builds fp16 engines from the
    fp32 file and keeps them next to the model, so a restart does not rebuild them.
    """
    options: dict[str, dict[str, str]] = {
        CUDA: {
            "cudnn_conv_algo_search": "HEURISTIC",
            "do_copy_in_default_stream": "1",
            "use_tf32": "0",
        },
        TENSORRT: {
            "trt_fp16_enable": "1",
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": str(folder / ".trt-cache"),
        },
    }
    return [(p, options.get(p, {})) for p in chain]


def _check_placement(name: str, requested: Provider, in_use: list[str]) -> None:
    """onnxruntime-gpu falls back to the CPU silently when a GPU provider cannot start: an
    explicit request must get the provider it asked for, or the start fails."""
    wanted = {"cuda": CUDA, "tensorrt": TENSORRT}.get(requested)
    if wanted is not None and in_use[0] != wanted:
        raise ProviderError(
            f"{name}: {requested} was requested but the session runs on {in_use}; check the "
            "driver, CUDA 13 and cuDNN 9 (and TensorRT 10 for tensorrt; onnxruntime logs the "
            "reason above), or serve with --provider auto"
        )


DEFAULT_MAX_BATCH = 32


def open_session(folder: Path, manifest: Manifest, config: SessionConfig | None = None,
                 buckets: tuple[int, ...] | None = None) -> ModelSession:  # fmt: skip
    """The model's session on the best provider there is, on the file for that provider; the
    files it is served with are checked against the manifest's sha256 before it is loaded.
    `buckets`: the batch sizes a GPU image model is padded to (default: batch_buckets of the
    largest batch a caller runs, DEFAULT_MAX_BATCH)."""
    import onnxruntime as ort

    config = config or SessionConfig()
    chain = provider_chain(config.provider, ort.get_available_providers())
    if chain[0] != CPU and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA / cuDNN from their pip packages
    if chain[0] == TENSORRT:  # it builds its own fp16 engines from the fp32 graph
        filename, precision = manifest.file, "fp32"
    else:
        filename, precision = model_file(manifest, chain[0] == CUDA, config.cpu_precision)
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    # No busy-waiting between ops: on a small machine the spinning threads would starve the
    # gRPC, decode and client threads that share its cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    manifest.verify(folder, (precision,))
    providers = provider_options(chain, folder)
    if chain[0] == CPU:
        session = cpu_session(folder / filename, options)
    else:
        session = ort.InferenceSession(str(folder / filename), options, providers=providers)
    in_use = session.get_providers()
    _check_placement(manifest.name, config.provider, in_use)
    if in_use[0] == CPU and chain[0] != CPU:  # auto, and the GPU did not start
        filename, precision = model_file(manifest, False, config.cpu_precision)
        log.warning(
            "%s: a GPU provider is installed but did not start (onnxruntime logs why above); "
            "serving %s on the CPU",
            manifest.name,
            precision,
        )
        manifest.verify(folder, (precision,))  # reopened: built as every CPU session is
        session = cpu_session(folder / filename, options)
        in_use = session.get_providers()
    log.info("%s/%s: %s on %s", manifest.name, manifest.version, filename, in_use)
    variant = manifest.variants.get(precision)
    if variant is not None and variant.gate and not variant.gate["passed"]:
        name, summary = f"{manifest.name}/{manifest.version}", variant.gate_summary()
        log.warning("%s: serving the %s file, whose %s; check it against your task or serve "
                    "fp32", name, precision, summary)  # fmt: skip
    model = ModelSession(manifest, folder, session, in_use, precision)
    if model.on_gpu and manifest.modality == "image":
        model.batch_buckets = buckets or batch_buckets(DEFAULT_MAX_BATCH)
        model.bucket_sessions = {  # the largest size runs on `session`
            size: ort.InferenceSession(str(folder / filename), options, providers=providers)
            for size in model.batch_buckets[:-1]
        }
    if manifest.modality == "text":  # automatic (0): a budget on a CPU, none on a GPU
        model.max_batch_tokens = config.max_batch_tokens or (
            0 if model.on_gpu else CPU_BATCH_TOKENS
        )
    return model
