"""The checked-in stubs must be what grpcio-tools generates from the .proto today."""

from pathlib import Path

from protos.generate import PROTO, ROOT, generate


def test_generated_stubs_are_not_stale(tmp_path):
    generate(tmp_path)
    folder = Path(PROTO).parent
    for name in ("embedder_pb2.py", "embedder_pb2.pyi", "embedder_pb2_grpc.py"):
        fresh = (tmp_path / folder / name).read_text()
        assert (ROOT / folder / name).read_text() == fresh, (
            f"{folder / name} is stale: run `python -m protos.generate` and commit the result"
        )
