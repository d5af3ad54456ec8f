"""`embedder-serve --workers N`: real supervisor and worker processes on shared ports, real
clients; a worker killed under load, a drain, one metrics endpoint for all of them."""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from server_helpers import free_port

from embedder.client import EmbedderClient
from embedder.serving.launch import ServeProcess

TEXT = "tiny_text"


ESTABLISHED, LISTEN = "01", "0A"  # /proc/net/tcp's states


def established_to(pid: int, port: int, state: str = ESTABLISHED) -> int:
    """How many TCP sockets on `port` in `state` the process holds (established connections,
    by default)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == state and f[9] in inodes:
                count += 1
    return count


def serve(repo, *flags) -> ServeProcess:
    return ServeProcess(["--repo", repo, "--address", "127.0.0.1:0", "--workers", "2", *flags])


def wait_for(predicate, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def two_workers(tiny_repo):
    metrics = free_port()
    with serve(tiny_repo, "--metrics-address", str(metrics), "--drain-seconds", "0") as server:
        server.metrics_port = metrics
        yield server


def embed_calls(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
    lines = [line for line in text.splitlines()
             if line.startswith("embedder_requests_total{") and '"Embed"' in line]  # fmt: skip
    assert len(lines) <= 1, lines  # one series for every worker, summed
    return float(lines[0].split()[-1]) if lines else 0.0


def test_two_workers_share_the_port_and_one_metrics_endpoint_sums_them(two_workers):
    workers = two_workers.worker_pids()
    assert len(workers) == 2
    port = int(two_workers.grpc_target.rsplit(":", 1)[1])
    before = embed_calls(two_workers.metrics_port)
    with EmbedderClient(two_workers.grpc_target, channels=16) as client:
        for i in range(48):
            assert client.embed_texts(TEXT, [f"text {i}"]).shape[0] == 1
        held = [established_to(w, port) for w in workers]
    assert sum(held) == 16 and min(held) > 0, held  # the kernel spread the connections
    assert embed_calls(two_workers.metrics_port) - before == 48


def test_a_worker_killed_under_load_is_replaced_and_no_call_hangs(two_workers):
    server = two_workers
    first = server.worker_pids()
    outcomes: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with EmbedderClient(server.grpc_target, channels=4, timeout=20) as client:
            while not stop.is_set():
                try:
                    client.embed_texts(TEXT, ["a text"])
                    outcomes.append("ok")
                except grpc.RpcError as exc:
                    outcomes.append(exc.code().name)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: len(outcomes) > 50)
    os.kill(first[0], signal.SIGKILL)
    wait_for(lambda: len(set(server.worker_pids()) - set(first)) == 1)
    served = len(outcomes)
    wait_for(lambda: len(outcomes) > served + 50)  # serving goes on
    stop.set()
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    assert set(outcomes) <= {"ok", "UNAVAILABLE"}, set(outcomes)  # none hung to its deadline
    workers = server.worker_pids()
    (replacement,) = set(workers) - set(first)
    port = int(server.grpc_target.rsplit(":", 1)[1])
    wait_for(lambda: established_to(replacement, port, LISTEN) > 0)  # once its models are warm
    with EmbedderClient(server.grpc_target, channels=16) as client:
        for i in range(16):
            client.embed_texts(TEXT, [f"text {i}"])
        assert established_to(replacement, port) > 0  # new connections reach the replacement

    # Nothing in flight now: a worker that dies takes none of its counts with it.
    before = embed_calls(server.metrics_port)
    os.kill(replacement, signal.SIGKILL)
    wait_for(lambda: len(set(server.worker_pids()) - set(workers)) == 1)
    assert embed_calls(server.metrics_port) == before


def test_sigterm_drains_every_worker_within_the_window(tiny_repo):
    server = serve(tiny_repo, "--drain-seconds", "2")
    workers = server.worker_pids()
    started = time.monotonic()
    assert server.stop(timeout=30) == 0
    assert time.monotonic() - started < 2 + 3
    assert not any(Path(f"/proc/{w}").exists() and "Z" not in
                   Path(f"/proc/{w}/stat").read_text().rsplit(")", 1)[1].split()[0]
                   for w in workers)  # fmt: skip


def test_a_worker_that_cannot_start_stops_the_supervisor(tmp_path):
    (tmp_path / "models").mkdir()
    with pytest.raises(RuntimeError, match="exited with 1 before listening"):
        serve(tmp_path / "models")
