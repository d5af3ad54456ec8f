"""Regenerate the checked-in stubs: `python -m protos.generate` from the repository root.

embedder.v1: Python stubs (grpcio-tools 1.81 writes protobuf 6.33 code, which runs on protobuf
6.33.5 and 7.x alike). KServe v2: a descriptor set that protos/inference/v2/messages.py loads
into a private descriptor pool, so a process can also import tritonclient, whose stubs define
the same `inference` package in the default pool. tests/protos/test_stubs_fresh.py fails when
either is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO = "protos/embedder/v1/embedder.proto"
V2_PROTO = "protos/inference/v2/grpc_predict_v2.proto"
V2_DESCRIPTORS = "protos/inference/v2/grpc_predict_v2.desc"


def generate(out_dir: Path = ROOT) -> None:
    from grpc_tools import protoc

    stubs = ["protoc", "-I", str(ROOT), f"--python_out={out_dir}", f"--pyi_out={out_dir}",
             f"--grpc_python_out={out_dir}", str(ROOT / PROTO)]  # fmt: skip
    descriptors = ["protoc", "-I", str(ROOT), f"--descriptor_set_out={out_dir / V2_DESCRIPTORS}",
                   str(ROOT / V2_PROTO)]  # fmt: skip
    (out_dir / V2_DESCRIPTORS).parent.mkdir(parents=True, exist_ok=True)
    for args in (stubs, descriptors):
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args[1:])}")


if __name__ == "__main__":
    generate()
    sys.exit(0)
