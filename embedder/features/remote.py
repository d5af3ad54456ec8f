"""The server engine: a running embedder-serve embeds; this process reads, hashes, dedupes."""

from __future__ import annotations

import json

import grpc
import numpy as np

from embedder.cache import CacheIdentity
from embedder.client import EmbedderClient, embed_request, item_errors, request_chunks
from embedder.core.errors import EmbedderError
from embedder.core.manifest import Manifest
from embedder.features.config import FeaturesConfig, worker_count
from embedder.features.prepare import Prepared
from protos.embedder.v1 import embedder_pb2 as pb


class ServerEngine:
    """Sends raw bytes / texts in requests within the limits the server reports; an item the
    server rejects (named in the status details), or one too big for any request, is recorded
    and the rest resent."""

    preprocessor = None  # the server preprocesses

    def __init__(self, config: FeaturesConfig):
        if not config.server:
            raise EmbedderError("engine 'server' needs --server host:port")
        self.config = config
        try:
            with self._client(config, 4 << 20) as client:
                info = client.model_info(config.model, config.version)
        except grpc.RpcError as exc:
            raise EmbedderError(f"server {config.server}: {exc.code().name}: {exc.details()}; "
                                "is embedder-serve running there?") from exc  # fmt: skip
        self.manifest = Manifest.from_dict(json.loads(info.manifest_json))
        if self.manifest.layer_outputs:
            raise EmbedderError(f"{config.model} is exported at several layers; a server sends "
                                "only `features`: embed it with --engine local or ray")  # fmt: skip
        self.identities = [CacheIdentity.of(self.manifest,
                                            self.manifest.file_sha256(info.precision))]  # fmt: skip
        self.max_bytes = info.batching.max_message_bytes
        self.max_items = info.batching.max_items_per_request
        self.client = self._client(config, self.max_bytes)
        self.in_flight = worker_count(config)
        self.prepare_in_processes = False  # the items are only read and hashed here
        self.kind = "text" if self.manifest.modality == "text" else "image"

    @staticmethod
    def _client(config: FeaturesConfig, max_bytes: int) -> EmbedderClient:
        return EmbedderClient(config.server, token=config.token, root_cert=config.root_cert,
                              max_message_bytes=max_bytes)  # fmt: skip

    def embed(self, batch: list[Prepared]) -> tuple[list[np.ndarray], list[tuple[int, str]]]:
        items = [pb.Item(**{self.kind: p.raw}) for p in batch]
        failures: list[tuple[int, str]] = []
        chunks = request_chunks(items, self.max_items, self.max_bytes, self.manifest.dim)
        parts = [self._send(items, chunk, failures) for chunk in chunks]
        return [np.concatenate(parts)], failures

    def _send(self, items: list[pb.Item], indices: list[int], failures: list) -> np.ndarray:
        alive = list(indices)
        while alive:
            request = embed_request(self.config.model, [items[i] for i in alive],
                                    version=self.config.version)  # fmt: skip
            if request.ByteSize() > self.max_bytes:  # one item alone over the limit
                size = items[alive[0]].ByteSize()
                reason = f"{size} bytes, over the server's message limit of {self.max_bytes}"
                failures.append((alive[0], reason))
                return np.zeros((0, self.manifest.dim), np.float32)
            try:
                return self.client.embed(request).embeddings
            except grpc.RpcError as exc:
                bad = item_errors(exc) if exc.code() == grpc.StatusCode.INVALID_ARGUMENT else []
                if not bad:
                    what = f"{exc.code().name}: {exc.details()}"
                    raise EmbedderError(f"server {self.config.server}: {what}") from exc
                for index, reason in sorted(bad, reverse=True):  # pop from the end first
                    failures.append((alive.pop(index), reason))
        return np.zeros((0, self.manifest.dim), np.float32)

    def close(self) -> None:
        self.client.close()
