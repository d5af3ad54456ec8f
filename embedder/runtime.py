"""onnxruntime sessions: provider selection, the file to serve for it, and the run call.

The provider really in use is read back from `session.get_providers()`: onnxruntime-gpu falls
back to CPU silently when CUDA cannot start, and a server must not claim a GPU it is not using.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .config import Provider, ServerConfig
from .errors import EmbedderError
from .manifest import Manifest

log = logging.getLogger(__name__)

CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
# Image models on a CPU run fastest per image in small batches (activations stay in cache;
# batches of 32 were 25-45% slower per image, README batch export benchmark).
CPU_IMAGE_BATCH = 4


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


def model_file(manifest: Manifest, on_gpu: bool, cpu_precision: str) -> tuple[str, str]:
    """(file, precision): fp16 on a GPU when exported, int8 on CPU when asked and exported."""
    wanted = "fp16" if on_gpu else cpu_precision
    if wanted in manifest.variants:
        return manifest.variants[wanted].file, wanted
    return manifest.file, "fp32"


@dataclass(eq=False)  # identity-hashed: the service keys its per-model state by session
class ModelSession:
    manifest: Manifest
    folder: Path
    session: object  # onnxruntime.InferenceSession
    providers: list[str]
    precision: str

    @property
    def on_gpu(self) -> bool:
        return self.providers[0] in (CUDA, TENSORRT)

    @property
    def output_names(self) -> list[str]:
        """features, then each published head's scores (in manifest order)."""
        return ["features", *(h.scores_output for h in self.manifest.heads.values())]

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """(N, dim) features, with each head's (N, classes) scores appended as columns."""
        outputs = self._outputs(self.output_names, feeds)
        if len(outputs) == 1:
            return outputs[0]
        return np.hstack([o.reshape(len(o), -1).astype(np.float32) for o in outputs])

    def features(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """(N, dim) features alone: a published model's head scores are not computed."""
        return self._outputs(["features"], feeds)[0]

    def _outputs(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if not self.on_gpu:
            return self.session.run(names, feeds)
        binding = self.session.io_binding()  # IO binding: inputs copied once, outputs fetched once
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()


def thread_defaults(config: ServerConfig) -> ServerConfig:
    """The server's automatic (0) thread settings made concrete: on a CPU, one single-threaded
    inference stream per core; on a GPU, one stream; the cores shared among the streams. A GPU
    provider this onnxruntime lacks fails here, once, before any model is loaded."""
    import onnxruntime as ort

    on_gpu = provider_chain(config.provider, ort.get_available_providers())[0] != CPU
    cores = len(os.sched_getaffinity(0))
    streams = config.batching.inference_streams or (1 if on_gpu else cores)
    threads = config.intra_op_threads or max(1, cores // streams)
    batching = replace(config.batching, inference_streams=streams)
    return replace(config, intra_op_threads=threads, batching=batching)


def in_chunks(run, size: int):
    """`run` over a batch as consecutive chunks of at most `size` items, outputs concatenated."""

    def chunked(feeds: dict[str, np.ndarray]) -> np.ndarray:
        n = len(next(iter(feeds.values())))
        if n <= size:
            return run(feeds)
        parts = (run({k: v[i : i + size] for k, v in feeds.items()}) for i in range(0, n, size))
        return np.concatenate(list(parts))

    return chunked


def open_session(folder: Path, manifest: Manifest, config: ServerConfig) -> ModelSession:
    import onnxruntime as ort

    chain = provider_chain(config.provider, ort.get_available_providers())
    if chain[0] != CPU and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA / cuDNN from their pip packages
    filename, precision = model_file(manifest, chain[0] != CPU, config.cpu_precision)
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    # No busy-waiting between ops: on a small machine the spinning threads would starve the
    # gRPC, decode and client threads that share its cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    session = ort.InferenceSession(str(folder / filename), options, providers=chain)
    in_use = session.get_providers()
    if config.provider in ("cuda", "tensorrt") and CUDA not in in_use:
        raise ProviderError(
            f"{manifest.name}: CUDA was requested but the session runs on {in_use}; check the "
            "driver, CUDA 13 and cuDNN 9 (onnxruntime logs the reason above)"
        )
    if precision == "fp16" and in_use[0] == CPU:  # fell back: serve fp32 on the CPU instead
        filename, precision = manifest.file, "fp32"
        session = ort.InferenceSession(str(folder / filename), options, providers=[CPU])
        in_use = session.get_providers()
    log.info("%s/%s: %s on %s", manifest.name, manifest.version, filename, in_use)
    return ModelSession(manifest, folder, session, in_use, precision)
