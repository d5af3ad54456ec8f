"""Start embedder-serve for a benchmark: in its own process, returned once it listens."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SERVE = "from embedder.serving.cli import serve_main; raise SystemExit(serve_main())"


def launch_server(flags: list[str], env: dict | None = None,
                  cwd: Path | None = None) -> subprocess.Popen:  # fmt: skip
    """`embedder-serve FLAGS` with this interpreter (env / cwd: another checkout's code)."""
    proc = subprocess.Popen([sys.executable, "-c", SERVE, *flags], stdout=subprocess.PIPE,
                            text=True, env=env, cwd=cwd)  # fmt: skip
    seen = []  # onnxruntime's DLL preloading may print before the server's line
    for line in proc.stdout:
        if "listening" in line:
            return proc
        seen.append(line)
    raise RuntimeError(f"embedder-serve did not start: {''.join(seen)!r}")
