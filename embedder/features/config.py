"""Batch feature export's configuration and summary, and the defaults measured for it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from embedder.core.batch_parts import CPU_IMAGE_BATCH
from embedder.core.config import Provider, SessionConfig, check_ranges
from embedder.core.manifest import Manifest
from embedder.core.preprocess import DEFAULT_MAX_PIXELS
from embedder.core.runtime import gpu_planned

EngineName = Literal["local", "server", "ray"]


@dataclass(frozen=True)
class FeaturesConfig:
    repo: Path = Path("models")
    model: str = ""  # a model in `repo` (or on `server`); required
    version: str = ""  # empty: the highest version in the repository
    cache: Path = Path("cache")
    engine: EngineName = "local"
    server: str | None = None  # host:port for engine="server"
    token: str | None = None  # its bearer token (--token), if it requires one
    root_cert: bytes | None = None  # PEM CA certificate, if it serves TLS
    batch_size: int = 0  # 0: what suits the model and provider (batch_size_for)
    # One pool of `workers` threads (0: one per core this process may use) reads and decodes
    # chunks of items and runs inference batches, whichever is next: never more busy threads
    # than cores. Batches run side by side with `intra_op_threads` each (0: every core), which
    # measured faster on a CPU than one batch at a time on all cores.
    workers: int = 0
    intra_op_threads: int = 1
    shard_rows: int = 2048  # rows per Parquet shard: the most a kill can cost
    provider: Provider = "auto"
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    ray_address: str | None = None  # None: a local Ray; "auto" or ray://host:port: a cluster
    ray_actors: int = 2  # one CPU and one onnxruntime thread each
    # Read, hash and decode or tokenise in worker processes, not threads (None: on a GPU, where
    # the inference waits on them; on a CPU the cores are busy with inference anyway).
    prepare_processes: bool | None = None
    progress: bool = True
    run_name: str = "run"  # the dataset's name in the cache's runs/ folder

    def __post_init__(self) -> None:
        check_ranges(self, at_least_one=("shard_rows", "ray_actors", "max_image_pixels"),
                     not_negative=("batch_size", "workers", "intra_op_threads"))  # fmt: skip

    def session(self) -> SessionConfig:
        return SessionConfig(provider=self.provider, intra_op_threads=self.intra_op_threads)


@dataclass
class Summary:
    total: int = 0
    embedded: int = 0
    from_cache: int = 0
    duplicates: int = 0
    failed: int = 0
    seconds: float = 0.0
    dataset: Path | None = None
    keys: list[str] = field(default_factory=list)  # this run's inputs in the cache, in order
    run_file: Path | None = None  # runs/<name>.parquet: this dataset's keys, labels, sources
    # A model exported at several layers: each cut point's run file (the last is run_file's).
    layers: dict[str, Path] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)  # why items failed, counted
    nodes: dict[str, int] = field(default_factory=dict)  # ray engine: rows embedded per node id

    def __str__(self) -> str:
        rate = self.embedded / self.seconds if self.seconds else 0.0
        text = (f"{self.total} items: {self.embedded} embedded, {self.from_cache} from cache, "
                f"{self.duplicates} duplicates, {self.failed} failed in {self.seconds:.1f} s "
                f"({rate:.1f} items/s) -> {self.dataset}")  # fmt: skip
        text += "".join(f"\n  layer {k}: {v}" for k, v in self.layers.items())
        return text + "".join(f"\n  node {k[:12]}: {v} rows" for k, v in self.nodes.items())


def worker_count(config: FeaturesConfig) -> int:
    if config.workers:
        return config.workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1


def batch_size_for(config: FeaturesConfig, manifest: Manifest) -> int:
    """The configured batch size, or by default the one that runs fastest per item as measured
    (README, batch export benchmark): on a CPU, image models in batches of 4 (activations stay
    in cache; batches of 32 were 25-45% slower per image), text encoders in batches of 32; on a
    GPU, large batches."""
    if config.batch_size:
        return config.batch_size
    if config.engine == "server":
        return 32  # items per request: the server forms its own batches
    if gpu_planned(config.provider):
        return 64
    return CPU_IMAGE_BATCH if manifest.modality == "image" else 32
