"""The local engine: the model's onnxruntime session in this process."""

from __future__ import annotations

import threading

import numpy as np

from embedder.cache import CacheIdentity
from embedder.core.errors import EmbedderError
from embedder.core.inputs import Preprocessor
from embedder.core.manifest import Manifest
from embedder.core.repository import model_folder, open_model
from embedder.core.runtime import ModelSession, gpu_planned, model_file
from embedder.features.config import FeaturesConfig, batch_size_for, worker_count
from embedder.features.prepare import Prepared


def batch_session(config: FeaturesConfig, manifest: Manifest | None = None) -> ModelSession:
    """The session batch export runs `config.model` on. On a GPU every batch, the last one
    too, runs at the one batch size: one cuDNN plan."""
    c = config
    manifest = manifest or Manifest.read(model_folder(c.repo, c.model, c.version))
    return open_model(c.repo, c.model, c.version, c.session(), (batch_size_for(c, manifest),),
                      manifest)  # fmt: skip


def planned_identities(manifest: Manifest, config: FeaturesConfig) -> list[CacheIdentity]:
    """The datasets of the file a session will run, one per cut point, known without loading
    it (CPU)."""
    _, precision = model_file(manifest, gpu_planned(config.provider), "fp32")
    return CacheIdentity.all_of(manifest, manifest.file_sha256(precision))


def session_identities(session: ModelSession) -> list[CacheIdentity]:
    m = session.manifest
    return CacheIdentity.all_of(m, m.file_sha256(session.precision))


class LazySession:
    """Opens the model on the first miss: a fully cached rerun never loads it. On a GPU the
    session is opened first: a GPU provider that does not start falls back to fp32 on the CPU,
    and the cache must be the one of the file that really runs."""

    def __init__(self, config: FeaturesConfig, manifest: Manifest):
        self.config, self.manifest = config, manifest
        self._session: ModelSession | None = None
        self._failure: Exception | None = None
        self._lock = threading.Lock()
        self.identities = planned_identities(manifest, config)
        if gpu_planned(config.provider):
            self.identities = session_identities(self.get())

    def get(self) -> ModelSession:
        with self._lock:
            if self._failure is not None:  # the batches queued behind a failed load fail at once
                raise self._failure
            if self._session is None:
                try:
                    session = batch_session(self.config, self.manifest)
                    if session_identities(session) != self.identities:
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
        self.identities = self.lazy.identities
        gpu = gpu_planned(config.provider)
        self.in_flight = 2 if gpu else worker_count(config)
        auto = config.prepare_processes is None
        self.prepare_in_processes = gpu if auto else config.prepare_processes

    def embed(self, batch: list[Prepared]) -> tuple[list[np.ndarray], list[tuple[int, str]]]:
        """Each cut point's vectors for the batch (one pass), and no failures."""
        arrays = [p.array for p in batch]
        return self.lazy.get().layer_features(self.preprocessor.collate(arrays)), []

    def close(self) -> None:
        pass
