"""Regenerate the checked-in Python stubs: `python -m protos.generate` from the repository root.

tests/protos/test_stubs_fresh.py fails when the stubs are stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO = "protos/embedder/v1/embedder.proto"


def generate(out_dir: Path = ROOT) -> None:
    from grpc_tools import protoc

    args = ["protoc", "-I", str(ROOT), f"--python_out={out_dir}", f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}", str(ROOT / PROTO)]  # fmt: skip
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")


if __name__ == "__main__":
    generate()
    sys.exit(0)
