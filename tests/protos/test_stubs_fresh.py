"""The checked-in stubs are what grpcio-tools generates today, and they run on protobuf 6.33
(this environment, which holds tritonclient) and on protobuf 7 (.ci/setup puts 7.x aside in
.venv/protobuf7)."""

import os
import subprocess
import sys
from pathlib import Path

import google.protobuf
import pytest

from protos.generate import PROTO, ROOT, V2_DESCRIPTORS, generate


def test_generated_stubs_are_not_stale(tmp_path):
    generate(tmp_path)
    folder = Path(PROTO).parent
    names = [folder / n for n in ("embedder_pb2.py", "embedder_pb2.pyi", "embedder_pb2_grpc.py")]
    for name in [*names, Path(V2_DESCRIPTORS)]:
        assert (ROOT / name).read_bytes() == (tmp_path / name).read_bytes(), (
            f"{name} is stale: run `python -m protos.generate` and commit the result"
        )


IMPORTS = """
import warnings
warnings.simplefilter("error")
import google.protobuf
from protos.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from protos.inference.v2 import messages
import tritonclient.grpc  # the protocol's package in the default pool too: no clash
from grpc_health.v1 import health_pb2
from google.rpc import error_details_pb2
request = embedder_pb2.EmbedRequest(model="m", items=[embedder_pb2.Item(text="x")])
assert embedder_pb2.EmbedRequest.FromString(request.SerializeToString()) == request
print(google.protobuf.__version__)
"""


@pytest.mark.parametrize("where", ["this environment", "protobuf 7"])
def test_the_stubs_run_on_protobuf_6_and_7(where):
    env = dict(os.environ)
    if where == "protobuf 7":
        aside = ROOT / ".venv" / "protobuf7"
        if not aside.is_dir():
            pytest.skip("protobuf 7 is put aside by .ci/setup (.venv/protobuf7)")
        env["PYTHONPATH"] = os.pathsep.join([str(aside), str(ROOT)])
    done = subprocess.run([sys.executable, "-c", IMPORTS], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    major = done.stdout.strip().split(".")[0]
    expected = "7" if where == "protobuf 7" else google.protobuf.__version__.split(".")[0]
    assert major == expected
