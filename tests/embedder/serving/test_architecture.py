"""The layering holds at run time: a served process loads neither torch nor scikit-learn."""

import subprocess

from embedder.client import EmbedderClient
from embedder.serving.launch import ServeProcess


def test_a_served_process_loads_neither_torch_nor_sklearn(tiny_repo):
    flags = [
        "--repo",
        tiny_repo,
        "--address",
        "127.0.0.1:0",
        "--log-level",
        "WARNING",
        "--drain-seconds",
        "0",
    ]
    server = ServeProcess(flags, python_flags=("-X", "importtime"), stderr=subprocess.PIPE)
    try:
        with EmbedderClient(server.grpc_target) as client:  # a request's code paths too
            assert client.embed_texts("tiny_text", ["the cat sat"]).shape == (1, 32)
            assert client.embed_images("tiny_image", [_png()]).shape == (1, 24)
    finally:
        server.stop()
        stderr = server.proc.stderr.read()
    imported = {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines()
                if line.startswith("import time:") and "|" in line}  # fmt: skip
    assert "embedder.serving.server" in imported and "onnxruntime" in imported
    heavy = sorted(m for m in imported if m.split(".")[0] in ("torch", "sklearn"))
    assert heavy == [], heavy[:10]


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (90, 20, 200)).save(buf, "PNG")
    return buf.getvalue()
