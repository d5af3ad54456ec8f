"""embedder-client against a real server: .npy and Parquet outputs, errors, the asyncio client."""

import asyncio
import io

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from embedder.client import AsyncEmbedderClient, EmbedderClient
from embedder.client.cli import client_main
from protos.embedder.v1 import embedder_pb2 as pb


def _write_images(folder, n=3):
    paths = []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.new("RGB", (50, 40), (i * 60, 20, 200)).save(path)
        paths.append(path)
    return paths


def test_embed_images_to_npy(tiny_server, tmp_path, capsys):
    paths = _write_images(tmp_path)
    out = tmp_path / "vectors.npy"
    argv = ["--server", tiny_server.target, "embed", "--model", "tiny_image", "--out", str(out),
            "--images", *map(str, paths)]  # fmt: skip
    assert client_main(argv) == 0
    with EmbedderClient(tiny_server.target) as c:
        np.testing.assert_allclose(np.load(out), c.embed_images("tiny_image", paths), atol=1e-6)
    assert "wrote 3 x 24" in capsys.readouterr().out


def test_embed_text_lines_to_parquet(tiny_server, tmp_path):
    lines = tmp_path / "texts.txt"
    lines.write_text("the cat\n\nstock market fell\n", encoding="utf-8")
    out = tmp_path / "vectors.parquet"
    argv = ["--server", tiny_server.target, "embed", "--model", "tiny_text", "--texts", str(lines),
            "--out", str(out), "--normalize"]  # fmt: skip
    assert client_main(argv) == 0
    table = pq.read_table(out)
    assert table.column("source").to_pylist() == ["the cat", "stock market fell"]
    column_type = table.schema.field("embedding").type
    assert column_type.list_size == 32 and column_type.value_type == "float32"
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_client_reports_server_errors(tiny_server, tmp_path, capsys):
    argv = ["--server", tiny_server.target, "embed", "--model", "nope", "--texts", __file__,
            "--out", str(tmp_path / "x.npy")]  # fmt: skip
    assert client_main(argv) == 2
    err = capsys.readouterr().err
    assert "NOT_FOUND" in err and "tiny_image (closest)" not in err and "tiny_text" in err
    assert client_main(["--server", tiny_server.target, "models"]) == 0
    assert "tiny_image/1\timage\t24\tfp32\tCPUExecutionProvider" in capsys.readouterr().out


def test_async_client_matches_sync(tiny_server):
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (9, 99, 199)).save(buf, "JPEG")

    async def main():
        async with AsyncEmbedderClient(tiny_server.target) as c:
            names = [m.name for m in await c.list_models()]
            return (
                names,
                await c.embed_images("tiny_image", [buf.getvalue()]),
                await c.embed_texts("tiny_text", ["dog"]),
            )

    names, image, text = asyncio.run(main())
    assert sorted(names) == ["tiny_image", "tiny_text"]
    with EmbedderClient(tiny_server.target) as c:
        np.testing.assert_allclose(image, c.embed_images("tiny_image", [buf.getvalue()]), atol=1e-6)
        np.testing.assert_allclose(text, c.embed_texts("tiny_text", ["dog"]), atol=1e-6)


def test_clients_split_long_inputs_into_requests_the_server_takes(tiny_server):
    texts = [f"sentence number {i}" for i in range(300)]  # over 256 items per request

    async def main():
        async with AsyncEmbedderClient(tiny_server.target) as c:
            return await c.embed_texts("tiny_text", texts)

    on_async = asyncio.run(main())
    with EmbedderClient(tiny_server.target) as c:
        on_sync = c.embed_texts("tiny_text", texts, batch_size=100)
        alone = c.embed_texts("tiny_text", texts[-1:])
    assert on_async.shape == on_sync.shape == (300, 32)
    np.testing.assert_allclose(on_async, on_sync, atol=1e-6)
    np.testing.assert_allclose(on_sync[-1:], alone, atol=1e-6)


def test_request_chunks_respect_items_and_bytes():
    from embedder.client import request_chunks

    items = [pb.Item(image=b"x" * n) for n in (40_000, 40_000, 40_000, 200_000, 10)]
    assert list(request_chunks(items, 2, 1 << 20)) == [[0, 1], [2, 3], [4]]
    # 100 kB messages: two 40 kB items fit, a 200 kB item goes alone (the server refuses it)
    assert list(request_chunks(items, 8, 100_000)) == [[0, 1], [2], [3], [4]]


def test_request_chunks_leave_room_for_the_answers():
    from embedder.client import request_chunks

    items = [pb.Item(text="hi") for _ in range(10)]
    # 384 floats per answer: 1544 bytes each, so a 7000-byte budget takes 3-4 per request
    chunks = list(request_chunks(items, 100, 8000, answer_dim=384))
    assert [i for c in chunks for i in c] == list(range(10))
    assert all(len(c) * (384 * 4 + 10) <= 7000 for c in chunks)


def test_clients_keep_to_the_limits_the_server_reports(tiny_repo):
    from server_helpers import running_server

    from embedder.engine.config import BatchingConfig

    texts = [f"sentence number {i}" for i in range(300)]
    limits = dict(max_items_per_request=64, max_message_bytes=20_000,
                  batching=BatchingConfig(max_queue_size=48))  # fmt: skip
    with running_server(tiny_repo, **limits) as server:

        async def main():
            async with AsyncEmbedderClient(server.target) as c:
                return await c.embed_texts("tiny_text", texts, truncate_dim=4)

        with EmbedderClient(server.target) as c:  # 32 floats per text: ~120 answers per message
            on_sync = c.embed_texts("tiny_text", texts, batch_size=256)
        on_async = asyncio.run(main())
    assert on_sync.shape == (300, 32) and on_async.shape == (300, 4)
    np.testing.assert_allclose(
        on_async, on_sync[:, :4] / np.linalg.norm(on_sync[:, :4], axis=1, keepdims=True), atol=1e-6
    )


def test_cli_refuses_bad_output_and_empty_input_before_any_work(tiny_server, tmp_path, capsys):
    import pytest

    texts = tmp_path / "texts.txt"
    texts.write_text("a line\n")
    with pytest.raises(SystemExit):  # argparse error, exit status 2
        client_main(["--server", tiny_server.target, "embed", "--model", "tiny_text",
                     "--texts", str(texts), "--out", str(tmp_path / "out.csv")])  # fmt: skip
    assert "use a .npy or .parquet" in capsys.readouterr().err
    texts.write_text("\n  \n")
    argv = ["--server", tiny_server.target, "embed", "--model", "tiny_text", "--texts",
            str(texts), "--out", str(tmp_path / "out.parquet")]  # fmt: skip
    assert client_main(argv) == 2
    assert "no non-empty line" in capsys.readouterr().err
    assert not (tmp_path / "out.parquet").exists()
    texts.write_bytes(b"caf\xe9\n")  # Latin-1, not UTF-8
    assert client_main(argv) == 2
    assert "utf-8" in capsys.readouterr().err


def test_cli_reads_a_table_of_texts_and_says_when_no_server_answers(tiny_server, tmp_path,
                                                                    capsys):  # fmt: skip
    """A CSV's header is not a text (it was embedded as one); a dead address is named."""
    table = tmp_path / "news.csv"
    table.write_text("body,label\nthe cat sat,a\nstock market fell,b\n")
    out = tmp_path / "v.parquet"
    argv = ["--server", tiny_server.target, "embed", "--model", "tiny_text", "--texts",
            str(table), "--text-column", "body", "--out", str(out)]  # fmt: skip
    assert client_main(argv) == 0
    assert pq.read_table(out).column("source").to_pylist() == ["the cat sat", "stock market fell"]
    assert client_main(["--server", "127.0.0.1:1", "models"]) == 2
    assert "cannot reach embedder-serve at 127.0.0.1:1" in capsys.readouterr().err


def test_models_as_json(tiny_server, capsys):
    import json

    assert client_main(["--server", tiny_server.target, "models", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert listed["tiny_text"]["dim"] == 32 and listed["tiny_image"]["precision"] == "fp32"
