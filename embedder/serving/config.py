"""The server's configuration: one frozen dataclass, filled from CLI flags in `embedder-serve`;
the engine's own settings travel inside it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from embedder.core.config import check_ranges
from embedder.core.errors import ConfigError
from embedder.engine.config import EngineConfig


@dataclass(frozen=True)
class ServerConfig:
    engine: EngineConfig = field(default_factory=EngineConfig)
    address: str = "127.0.0.1:50051"
    # HTTP next to gRPC: the OpenAI embeddings API (/v1) and KServe v2 REST (/v2). None: off.
    http_address: str | None = None
    max_message_bytes: int = 64 * 1024 * 1024
    # Prometheus /metrics at HOST:PORT (a bare PORT: on loopback) when set; no auth, no TLS.
    metrics_address: str | None = None
    auth_token: str | None = None  # require "authorization: Bearer <token>" when set
    tls_cert: Path | None = None
    tls_key: Path | None = None
    drain_seconds: float = 10.0  # health NOT_SERVING and new work refused, then the port closes
    # HTTP: a request's headers, and then its body, must each arrive within this many seconds.
    read_timeout_seconds: float = 30.0
    # Server processes on the same ports (SO_REUSEPORT) under a supervisor (serving/workers.py).
    workers: int = 1
    reuse_port: bool = False  # set for each worker: its ports are shared with the others

    def __post_init__(self) -> None:
        check_ranges(self, ("max_message_bytes", "read_timeout_seconds", "workers"),
                     not_negative=("drain_seconds",))  # fmt: skip
        self.metrics_host_port()

    def metrics_host_port(self) -> tuple[str, int] | None:
        """Where Prometheus metrics listen: `metrics_address` as (host, port), loopback when it
        names only a port; None when off."""
        if self.metrics_address is None:
            return None
        host, _, port = str(self.metrics_address).rpartition(":")
        if not port.isdigit():
            raise ConfigError(f"--metrics-address {self.metrics_address!r}: give PORT or "
                              "HOST:PORT, e.g. 9100 or 0.0.0.0:9100")  # fmt: skip
        return host.strip("[]") or "127.0.0.1", int(port)
