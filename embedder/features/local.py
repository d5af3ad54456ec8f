"""The local engine: the model's onnxruntime session in this process."""

from __future__ import annotations

import threading

import numpy as np

from embedder.cache import CacheIdentity
from embedder.core.errors import EmbedderError
from embedder.core.inputs import Preprocessor
from embedder.core.manifest import Manifest
from embedder.core.repository import model_folder
from embedder.core.runtime import ModelSession, model_file, open_session
from embedder.features.config import FeaturesConfig, batch_size_for, on_gpu, worker_count
from embedder.features.prepare import Prepared


def open_model(config: FeaturesConfig, manifest: Manifest | None = None) -> ModelSession:
    """The session batch export runs `config.model` on."""
    folder = model_folder(config.repo, config.model, config.version)
    manifest = manifest or Manifest.read(folder)
    # On a GPU every batch, the last one too, runs at the one batch size: one cuDNN plan.
    buckets = (batch_size_for(config, manifest),)
    return open_session(folder, manifest, config.session(), buckets)


def planned_identity(manifest: Manifest, config: FeaturesConfig) -> CacheIdentity:
    """The identity of the file a session will run, known without loading it (CPU)."""
    _, precision = model_file(manifest, on_gpu(config.provider), "fp32")
    return CacheIdentity.of(manifest, manifest.file_sha256(precision))


class LazySession:
    """Opens the model on the first miss: a fully cached rerun never loads it. On a GPU the
    session is opened first: a GPU provider that does not start falls back to fp32 on the CPU,
    and the cache must be the one of the file that really runs."""

    def __init__(self, config: FeaturesConfig, manifest: Manifest):
        self.config, self.manifest = config, manifest
        self._session: ModelSession | None = None
        self._failure: Exception | None = None
        self._lock = threading.Lock()
        self.identity = planned_identity(manifest, config)
        if on_gpu(config.provider):
            self.identity = CacheIdentity.of_session(self.get())

    def get(self) -> ModelSession:
        with self._lock:
            if self._failure is not None:  # the batches queued behind a failed load fail at once
                raise self._failure
            if self._session is None:
                try:
                    session = open_model(self.config, self.manifest)
                    if CacheIdentity.of_session(session) != self.identity:
                        raise EmbedderError(
                            f"{self.config.model}: the session runs {session.precision} on "
                            f"{session.providers}, not the file this cache was opened for"
                        )
                except Exception as exc:
                    self._failure = exc
                    raise
                self._session = session
            return self._session


class LocalEngine:
    """Preprocesses in the export's workers and runs batches on the session, side by side
    (one per worker on a CPU; two in flight on a GPU, which runs them one after another)."""

    def __init__(self, config: FeaturesConfig):
        self.folder = folder = model_folder(config.repo, config.model, config.version)
        self.manifest = Manifest.read(folder)
        self.preprocessor = Preprocessor(self.manifest, folder, config.max_image_pixels)
        self.lazy = LazySession(config, self.manifest)
        self.identity = self.lazy.identity
        gpu = on_gpu(config.provider)
        self.in_flight = 2 if gpu else worker_count(config)
        auto = config.prepare_processes is None
        self.prepare_in_processes = gpu if auto else config.prepare_processes

    def embed(self, batch: list[Prepared]) -> tuple[np.ndarray, list[tuple[int, str]]]:
        arrays = [p.array for p in batch]
        return self.lazy.get().features(self.preprocessor.collate(arrays)), []

    def close(self) -> None:
        pass
