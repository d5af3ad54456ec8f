"""A real EmbedderServer on a free loopback port, in a background thread with its own loop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import threading
from collections.abc import Iterator

from embedder.core.config import SessionConfig
from embedder.engine.config import EngineConfig
from embedder.serving.config import ServerConfig
from embedder.serving.server import EmbedderServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    def __init__(self, config: ServerConfig):
        self.server = EmbedderServer(config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def call(self, coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> int:
        self.thread.start()
        return self.call(self.server.start())

    def stop(self, grace: float | None = 0) -> None:
        self.call(self.server.stop(grace))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def server_config(repo, **settings) -> ServerConfig:
    """A test server's config: loopback on a free port, the CPU provider, four preprocessing
    threads; `settings` by field name, whichever of the three configs holds it."""
    parts: dict[type, dict] = {SessionConfig: {"provider": "cpu"}, ServerConfig: {},
                               EngineConfig: {"repository": repo, "preprocess_threads": 4}}  # fmt: skip
    for name, value in settings.items():
        owner = next((c for c in parts if name in {f.name for f in dataclasses.fields(c)}), None)
        if owner is None:
            raise TypeError(f"no config has a setting {name!r}")
        parts[owner][name] = value
    engine = EngineConfig(session=SessionConfig(**parts[SessionConfig]), **parts[EngineConfig])
    return ServerConfig(engine=engine, **{"address": "127.0.0.1:0", **parts[ServerConfig]})


@contextlib.contextmanager
def running_server(repo, **settings) -> Iterator[ServerThread]:
    st = ServerThread(server_config(repo, **settings))
    st.start()
    st.target = f"127.0.0.1:{st.server.port}"
    try:
        yield st
    finally:
        st.stop()


def self_signed_cert(folder, name: str = "server"):
    """(key, cert) PEM files for localhost made with the openssl CLI; skips without it."""
    import shutil
    import subprocess

    import pytest

    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available to make a test certificate")
    key, cert = folder / f"{name}-key.pem", folder / f"{name}-cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
         "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert
