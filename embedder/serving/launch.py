"""`embedder-serve` in a process of its own, returned once it listens: what benchmarks, tests and
anything that supervises servers start (the server prints one line when both ports listen)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from embedder.core.processes import children

SERVE = "from embedder.serving.cli import serve_main; raise SystemExit(serve_main())"


class ServeProcess:
    """`embedder-serve FLAGS` run by this interpreter; `grpc_target` and `http_target` (None
    without `--http-address`) are where it listens. `python_flags` go before the program (for
    example `-X importtime`); `env` / `cwd` run another checkout's code. Use it as a context
    manager, or call `stop()`."""

    def __init__(self, flags: list[str], *, python_flags: tuple[str, ...] = (),
                 env: dict | None = None, cwd: Path | None = None, stderr=None):  # fmt: skip
        cmd = [sys.executable, *python_flags, "-c", SERVE, *map(str, flags)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                     env=env, cwd=cwd)  # fmt: skip
        seen = []  # onnxruntime's DLL preloading may print before the server's line
        for line in self.proc.stdout:
            if "listening" in line:
                ports = re.findall(r"port (\d+)", line)
                self.grpc_target = f"127.0.0.1:{ports[0]}"
                self.http_target = f"127.0.0.1:{ports[1]}" if len(ports) > 1 else None
                return
            seen.append(line)
        self.proc.wait(60)
        raise RuntimeError(f"embedder-serve exited with {self.proc.returncode} before listening: "
                           f"{''.join(seen)[-2000:]!r}")  # fmt: skip

    @property
    def pid(self) -> int:
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        """With `--workers N`: the worker processes, the supervisor's children that run the
        server (multiprocessing may start a resource tracker beside them); Linux only."""
        return [pid for pid, command in children(self.pid) if "resource_tracker" not in command]

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (a drain of --drain-seconds), then its exit status; killed after `timeout`."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
