"""Health transitions, and a SIGTERM drain of a real `embedder-serve` process."""

import asyncio
import io
import signal
import subprocess
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from server_helpers import ServerThread, free_port, server_config

from embedder.client import EmbedderClient
from embedder.serving.launch import ServeProcess

SERVING, NOT_SERVING = (
    health_pb2.HealthCheckResponse.SERVING,
    health_pb2.HealthCheckResponse.NOT_SERVING,
)


def _watch(target: str, seen: list, stop: threading.Event) -> None:
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
        try:
            for update in health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="embedder.v1.Embedder"), timeout=120
            ):
                seen.append(update.status)
                if stop.is_set():
                    return
        except grpc.RpcError:
            return


@pytest.mark.slow
def test_not_serving_until_warm_then_serving_then_draining(default_repo, monkeypatch):
    from embedder.core.repository import ModelRepository

    observed_loading = threading.Event()
    real_load = ModelRepository.load

    def gated_load(*args):  # hold model loading until the watcher has seen the loading state
        assert observed_loading.wait(60)
        return real_load(*args)

    monkeypatch.setattr(ModelRepository, "load", staticmethod(gated_load))
    port = free_port()
    target = f"127.0.0.1:{port}"
    st = ServerThread(server_config(default_repo, address=target, provider="auto"))
    st.thread.start()
    seen: list = []
    stop = threading.Event()
    starting = asyncio.run_coroutine_threadsafe(st.server.start(), st.loop)
    watcher = threading.Thread(target=_watch, args=(target, seen, stop), daemon=True)
    watcher.start()
    deadline = time.monotonic() + 30
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    observed_loading.set()
    starting.result(120)
    while SERVING not in seen and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    st.stop(grace=1)
    watcher.join(10)
    assert seen[0] == NOT_SERVING, seen  # while the four default models load and warm up
    assert SERVING in seen
    assert seen[-1] == NOT_SERVING, seen  # draining


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (i * 9 % 256, 50, 90)).save(buf, "PNG")
    return buf.getvalue()


def test_sigterm_drains_in_flight_requests(tiny_repo):
    flags = ["--repo", tiny_repo, "--address", "127.0.0.1:0", "--max-queue-delay-ms", "400",
             "--max-batch-size", "256", "--drain-seconds", "2"]  # fmt: skip
    server = ServeProcess(flags, stderr=subprocess.PIPE)
    try:
        results, errors = {}, []

        def worker(i):
            try:
                with EmbedderClient(server.grpc_target) as c:
                    results[i] = c.embed_images("tiny_image", [_png(i)] * 4)
            except grpc.RpcError as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        time.sleep(0.2)  # the requests sit in the 400 ms batching window
        server.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        assert errors == [] and len(results) == 16
        assert all(r.shape == (4, 24) and np.isfinite(r).all() for r in results.values())
        assert server.proc.wait(30) == 0
        assert "draining for 2 s" in server.proc.stderr.read()  # was "draining (up to 0 s)"
    finally:
        server.stop()
