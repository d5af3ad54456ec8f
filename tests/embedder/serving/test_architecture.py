"""The layering holds at run time: a served process loads neither torch nor scikit-learn."""

import subprocess
import sys

from server_helpers import free_port

from embedder.client import EmbedderClient

SERVE = "from embedder.serving.cli import serve_main; raise SystemExit(serve_main())"


def test_a_served_process_loads_neither_torch_nor_sklearn(tiny_repo):
    port = free_port()
    cmd = [sys.executable, "-X", "importtime", "-c", SERVE, "--repo", str(tiny_repo),
           "--address", f"127.0.0.1:{port}", "--log-level", "WARNING"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "listening" in proc.stdout.readline()
        with EmbedderClient(f"127.0.0.1:{port}") as client:  # a request's code paths too
            assert client.embed_texts("tiny_text", ["the cat sat"]).shape == (1, 32)
            assert client.embed_images("tiny_image", [_png()]).shape == (1, 24)
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=60)
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
