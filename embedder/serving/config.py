"""The server's configuration: one frozen dataclass, filled from CLI flags in `embedder-serve`;
the engine's own settings travel inside it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from embedder.core.config import check_ranges
from embedder.engine.config import EngineConfig


@dataclass(frozen=True)
class ServerConfig:
    engine: EngineConfig = field(default_factory=EngineConfig)
    address: str = "127.0.0.1:50051"
    # HTTP next to gRPC: the OpenAI embeddings API (/v1) and KServe v2 REST (/v2). None: off.
    http_address: str | None = None
    max_message_bytes: int = 64 * 1024 * 1024
    metrics_port: int | None = None  # Prometheus /metrics on this port when set
    auth_token: str | None = None  # require "authorization: Bearer <token>" when set
    tls_cert: Path | None = None
    tls_key: Path | None = None
    drain_seconds: float = 10.0  # health NOT_SERVING and new work refused, then the port closes

    def __post_init__(self) -> None:
        check_ranges(self, ("max_message_bytes",), not_negative=("drain_seconds",))
