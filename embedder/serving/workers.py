"""`embedder-serve --workers N`: N server processes on the same gRPC and HTTP ports, under a
supervisor.

The kernel spreads new connections over the processes listening on a port with SO_REUSEPORT;
calls on one connection stay with its process, so a client that wants several processes opens
several connections (`EmbedderClient(..., channels=k)`). The supervisor
- starts the workers (spawned, so none inherits another's threads) and prints the listening
  line once every worker listens; a worker that dies before it listens stops them all;
- restarts a worker that dies later: the connections it held close, so their calls fail with
  UNAVAILABLE (HTTP: a closed connection) at once, never hang;
- forwards SIGTERM / SIGINT: each worker drains for `--drain-seconds` and exits; one still
  running a few seconds after that is killed;
- serves one Prometheus endpoint summing every worker, past and present (prometheus_client's
  multiprocess mode: each worker writes its values to files in a folder of the supervisor's).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import replace
from multiprocessing.connection import Connection, wait

from embedder.core.errors import EmbedderError
from embedder.serving.config import ServerConfig

log = logging.getLogger(__name__)

KILL_AFTER_DRAIN_SECONDS = 5.0  # a worker still alive this long after its drain window is killed
START_SECONDS = 600.0  # loading and warming every model; a worker that takes longer is stopped
RESTART_PAUSE_SECONDS = 1.0  # between a crash and its replacement, when the crash was quick


def _worker(config: ServerConfig, conn: Connection, log_level: str) -> None:
    """A worker process: the whole server, telling the supervisor its ports once it listens."""
    import asyncio

    from embedder.serving.server import serve_forever

    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s worker {os.getpid()} "
                        "%(name)s: %(message)s")  # fmt: skip

    def ready(*ports) -> None:
        try:
            conn.send(ports)
        except OSError:  # a restarted worker's supervisor does not wait for the message
            pass

    asyncio.run(serve_forever(config, ready=ready))


def _shared_address(address: str) -> tuple[str, socket.socket | None]:
    """`address` with a concrete port: a port of 0 is chosen here and held by a bound socket
    that never listens (SO_REUSEPORT), so every worker binds the same one."""
    host, _, port = address.rpartition(":")
    if port != "0":
        return address, None
    holder = socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((host.strip("[]") or "127.0.0.1", 0))
    return f"{host}:{holder.getsockname()[1]}", holder


class Supervisor:
    def __init__(self, config: ServerConfig, log_level: str = "INFO"):
        self.config, self.log_level = config, log_level
        self.context = multiprocessing.get_context("spawn")
        self.workers: list[multiprocessing.Process | None] = [None] * config.workers
        self.started: list[float] = [0.0] * config.workers
        self.stopping = False

    def run(self) -> int:
        metrics_dir = tempfile.mkdtemp(prefix="embedder-metrics.")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # inherited by every worker
        address, grpc_holder = _shared_address(self.config.address)
        http, http_holder = (_shared_address(self.config.http_address)
                             if self.config.http_address else (None, None))  # fmt: skip
        self.worker_config = replace(self.config, address=address, http_address=http,
                                     metrics_address=None, workers=1, reuse_port=True)  # fmt: skip
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        try:
            ports = self._start_all()
            if ports is None:
                return 1
            self._serve_metrics(metrics_dir)
            from embedder.serving.server import listening_line

            print(listening_line(ports[0], ports[1], self.config.workers), flush=True)
            self._watch()
            return 0
        finally:
            self._stop_all()
            for holder in (grpc_holder, http_holder):
                if holder is not None:
                    holder.close()
            shutil.rmtree(metrics_dir, ignore_errors=True)

    def _stop(self, signum, frame) -> None:
        self.stopping = True

    def _start(self, slot: int) -> Connection:
        ours, theirs = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=_worker,
            name=f"embedder-worker-{slot}",
            args=(self.worker_config, theirs, self.log_level),
        )
        process.start()
        theirs.close()
        self.workers[slot], self.started[slot] = process, time.monotonic()
        log.info("worker %d started, pid %d", slot, process.pid)
        return ours

    def _start_all(self) -> tuple[int, int | None] | None:
        """Every worker listening: their ports; None when one died first (or a signal came)."""
        pipes = {self._start(slot): slot for slot in range(self.config.workers)}
        ports = None
        deadline = time.monotonic() + START_SECONDS
        while pipes and not self.stopping and time.monotonic() < deadline:
            for conn in wait(list(pipes), timeout=0.5):
                slot = pipes.pop(conn)
                try:
                    ports = conn.recv()
                except EOFError:  # it exited before listening: its own error is on stderr
                    self.workers[slot].join(5)
                    log.error("worker %d exited with %s before it listened; stopping", slot,
                              self.workers[slot].exitcode)  # fmt: skip
                    return None
        return ports if not pipes else None

    def _watch(self) -> None:
        """Until a signal: replace a worker that dies."""
        from prometheus_client import multiprocess

        while not self.stopping:
            alive = {w.sentinel: slot for slot, w in enumerate(self.workers) if w is not None}
            for sentinel in wait(list(alive), timeout=0.5):
                slot = alive[sentinel]
                dead = self.workers[slot]
                dead.join()
                multiprocess.mark_process_dead(dead.pid)
                if self.stopping:
                    break
                log.warning("worker %d (pid %d) exited with %s; starting another", slot,
                            dead.pid, dead.exitcode)  # fmt: skip
                if time.monotonic() - self.started[slot] < 10:
                    time.sleep(RESTART_PAUSE_SECONDS)  # a crash loop must not spin
                self._start(slot).close()

    def _stop_all(self) -> None:
        """SIGTERM to every worker (each drains), SIGKILL to any still running after that."""
        running = [w for w in self.workers if w is not None and w.is_alive()]
        for w in running:
            w.terminate()
        deadline = time.monotonic() + self.config.drain_seconds + KILL_AFTER_DRAIN_SECONDS
        for w in running:
            w.join(max(0.0, deadline - time.monotonic()))
            if w.is_alive():
                log.error("worker pid %d did not end its drain in time; killing it", w.pid)
                w.kill()
                w.join()

    def _serve_metrics(self, folder: str) -> None:
        host_port = self.config.metrics_host_port()
        if host_port is None:
            return
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=folder)
        try:
            start_http_server(host_port[1], addr=host_port[0], registry=registry)
        except OSError as exc:
            raise EmbedderError(f"cannot serve metrics on {self.config.metrics_address} "
                                f"({exc}); pick another --metrics-address") from exc  # fmt: skip
