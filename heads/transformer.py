"""`Embeddings`: a scikit-learn transformer from raw inputs to backbone embeddings.

    make_pipeline(Embeddings("mobilenet_v2"), LogisticRegression()).fit(image_paths, labels)

Inputs are image files, encoded bytes or RGB arrays (image models), or strings (text models).
It embeds through a running server (`server="host:port"`) or a local onnxruntime session on the
model repository. It has nothing to learn: `fit` only opens the model and records its
dimension, so cloning, grid search and cross-validation work as for any transformer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from embedder.core.errors import InputError
from embedder.core.vectors import unit_rows


class Embeddings(TransformerMixin, BaseEstimator):
    def __init__(self, model: str = "mobilenet_v2", repo: str | Path = "models",
                 server: str | None = None, version: str = "", normalize: bool = False,
                 batch_size: int = 32, token: str | None = None,
                 root_cert: bytes | None = None):  # fmt: skip
        self.model = model
        self.repo = repo
        self.server = server
        self.version = version
        self.normalize = normalize
        self.batch_size = batch_size
        self.token = token  # bearer token of a server started with --token
        self.root_cert = root_cert  # PEM CA certificate of a server serving TLS

    def _client(self):
        from embedder.client import EmbedderClient

        return EmbedderClient(self.server, token=self.token, root_cert=self.root_cert)

    def fit(self, X, y=None):
        self._session = self._preprocessor = None  # parameters may have changed since the fit
        if self.server:
            with self._client() as client:
                info = client.model_info(self.model, self.version)
            self.modality_, self.dim_ = info.modality, int(info.dim)
        else:
            session = self._local_session()
            self.modality_, self.dim_ = session.manifest.modality, session.manifest.dim
        self.n_features_out_ = self.dim_
        return self

    def transform(self, X) -> np.ndarray:
        check_is_fitted(self, "dim_")
        items = list(X)
        if not items:
            return np.zeros((0, self.dim_), np.float32)
        out = self._via_server(items) if self.server else self._local(items)
        if self.normalize:
            out = unit_rows(out)
        return out.astype(np.float32, copy=False)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        check_is_fitted(self, "dim_")
        return np.array([f"{self.model}_{i}" for i in range(self.dim_)], dtype=object)

    def _via_server(self, items: list) -> np.ndarray:
        with self._client() as client:
            if self.modality_ == "text":
                return client.embed_texts(
                    self.model, items, batch_size=self.batch_size, version=self.version
                )
            return client.embed_images(
                self.model, items, batch_size=self.batch_size, version=self.version
            )

    def _local_session(self):
        from embedder.core.inputs import Preprocessor
        from embedder.core.repository import open_model

        if getattr(self, "_session", None) is None:
            # One caller: its runs get all the cores (SessionConfig's default).
            self._session = open_model(self.repo, self.model, self.version)
            self._preprocessor = Preprocessor(self._session.manifest, self._session.folder)
        return self._session

    def _local(self, items: list) -> np.ndarray:
        from embedder.core.inputs import RawItem
        from embedder.core.preprocess import image_to_pixels

        session, pre = self._local_session(), self._preprocessor
        parts = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            if self.modality_ == "text":
                arrays = pre.texts([str(t) for t in chunk])
            else:
                arrays = []
                for i, item in enumerate(chunk, start):
                    if isinstance(item, np.ndarray):
                        arrays.append(
                            image_to_pixels(item.astype(np.uint8), session.manifest.preprocess)
                        )
                    elif isinstance(item, str | Path | bytes):
                        data = Path(item).read_bytes() if isinstance(item, str | Path) else item
                        arrays.append(pre.image(i, RawItem("image", data)))
                    else:
                        raise InputError(
                            f"{type(item).__name__}; give a path, bytes or an RGB array", i
                        )
            parts.append(session.features(pre.collate(arrays)))
        return np.concatenate(parts)

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_session", None)  # an onnxruntime session is reopened, not pickled
        state.pop("_preprocessor", None)
        return state
