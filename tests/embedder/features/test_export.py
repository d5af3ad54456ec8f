"""Batch feature export: real image files (corrupt ones too), real Parquet, all engines."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
import pytest
from image_files import make_images
from PIL import Image

from embedder.cache import load_features
from embedder.core.manifest import Manifest
from embedder.core.preprocess import TextTokenizer, preprocess_image_bytes
from embedder.core.sources import image_folder, text_table
from embedder.features import FeaturesConfig, export_features


@pytest.fixture
def images(tmp_path):
    return make_images(tmp_path / "images")


def config(repo, cache, **kw):
    return FeaturesConfig(repo=repo, model="tiny_image", cache=cache, batch_size=4,
                             shard_rows=5, progress=False, **kw)  # fmt: skip


def expected_embeddings(repo, paths):
    cfg = Manifest.read(repo / "tiny_image" / "1").preprocess
    pixels = np.stack([preprocess_image_bytes(p.read_bytes(), cfg) for p in paths])
    session = ort.InferenceSession(
        str(repo / "tiny_image" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return session.run(["features"], {"pixels": pixels})[0]


def rows_by_key(dataset):
    f = load_features(dataset)
    order = np.argsort(f.keys)
    return f.keys[order], f.X[order], (None if f.y is None else f.y[order]), f.sources[order]


def test_local_export_embeds_labels_and_records_failures(tiny_repo, images, tmp_path):
    summary = export_features(
        image_folder(images, labels_from_folders=True), config(tiny_repo, tmp_path / "c")
    )
    assert (summary.total, summary.embedded, summary.duplicates, summary.failed) == (15, 12, 1, 2)
    f = load_features(summary.dataset)
    assert f.X.shape == (12, 24)
    sources = [str(s) for s in f.sources]
    from pathlib import Path

    np.testing.assert_allclose(
        f.X, expected_embeddings(tiny_repo, [Path(s) for s in sources]), atol=1e-5
    )
    assert {s.split("/")[-2]: y for s, y in zip(sources, f.y, strict=True)} == {
        "cats": "cats",
        "dogs": "dogs",
    }
    failures = (
        pq.ParquetDataset(sorted((summary.dataset / "failures").glob("*.parquet")))
        .read()
        .to_pylist()
    )
    reasons = {r["source"].rsplit("/", 1)[-1]: r["reason"] for r in failures}
    assert (
        reasons["corrupt.jpg"]
        == "cannot decode image: not one of the accepted formats (JPEG, PNG, WEBP, BMP, GIF, TIFF)"
    )
    assert "truncated" in reasons["truncated.jpg"].lower()
    assert json.loads((summary.dataset / "dataset.json").read_text())["dim"] == 24


def test_rerun_is_all_cache_and_writes_nothing(tiny_repo, images, tmp_path):
    cfg = config(tiny_repo, tmp_path / "c")
    first = export_features(image_folder(images, True), cfg)
    shards = sorted(p.name for p in first.dataset.rglob("*.parquet"))
    again = export_features(image_folder(images, True), cfg)
    assert (again.embedded, again.from_cache, again.duplicates, again.failed) == (0, 12, 1, 2)
    assert sorted(p.name for p in again.dataset.rglob("*.parquet")) == shards


def test_new_files_only_are_embedded(tiny_repo, images, tmp_path):
    cfg = config(tiny_repo, tmp_path / "c")
    export_features(image_folder(images, True), cfg)
    Image.new("RGB", (50, 50), (1, 2, 3)).save(images / "cats" / "new.png")
    again = export_features(image_folder(images, True), cfg)
    assert (again.embedded, again.from_cache) == (1, 12)


def test_the_cli_prepares_in_processes_when_asked(tiny_repo, tmp_path, capsys):
    from embedder.features.cli import main

    table = tmp_path / "texts.jsonl"
    table.write_text('{"text": "the cat sat"}\n{"text": "stock market fell"}\n')
    args = ["export", "--texts", str(table), "--model", "tiny_text", "--repo", str(tiny_repo),
            "--cache", str(tmp_path / "c"), "--prepare-in", "processes", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert "2 items: 2 embedded" in capsys.readouterr().out


@pytest.mark.parametrize("processes", [False, True])  # tokenised in threads or processes
def test_text_tables_with_bad_lines(tiny_repo, tmp_path, processes):
    jsonl = tmp_path / "texts.jsonl"
    with open(jsonl, "wb") as f:
        f.write(b'{"text": "the cat sat", "label": "pets"}\n')
        f.write(b'{"text": "stock market fell", "label": "money"}\n')
        f.write(b'{"text": "caf\xe9 latin-1", "label": "money"}\n')  # not UTF-8
        f.write(b'{"text": "   ", "label": "pets"}\n')  # empty
        f.write(b'{"text": "the cat sat", "label": "pets"}\n')  # duplicate
    cfg = FeaturesConfig(repo=tiny_repo, model="tiny_text", cache=tmp_path / "c", progress=False,
                         prepare_processes=processes)  # fmt: skip
    summary = export_features(text_table(jsonl, "text", "label"), cfg)
    assert (summary.embedded, summary.failed, summary.duplicates) == (2, 2, 1)
    keys, X, y, sources = rows_by_key(summary.dataset)
    folder = tiny_repo / "tiny_text" / "1"
    tok = TextTokenizer(folder / "tokenizer.json", Manifest.read(folder).preprocess)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    by_source = dict(zip(sources, X, strict=True))
    np.testing.assert_allclose(
        by_source["texts.jsonl:0"], session.run(["features"], tok(["the cat sat"]))[0][0], atol=1e-5
    )
    failures = (
        pq.ParquetDataset(sorted((summary.dataset / "failures").glob("*.parquet")))
        .read()
        .to_pylist()
    )
    assert sorted(r["reason"] for r in failures) == ["empty text", "not valid UTF-8"]


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_csv_and_parquet_sources(tiny_repo, tmp_path, suffix):
    import pyarrow as pa

    path = tmp_path / f"t.{suffix}"
    table = pa.table({"body": ["the dog", "a cup of coffee"], "topic": ["a", "b"]})
    if suffix == "csv":
        path.write_text("body,topic\nthe dog,a\na cup of coffee,b\n")
    else:
        pq.write_table(table, path)
    cfg = FeaturesConfig(repo=tiny_repo, model="tiny_text", cache=tmp_path / "c", progress=False)
    summary = export_features(text_table(path, "body", "topic"), cfg)
    assert summary.embedded == 2 and sorted(load_features(summary.dataset).y) == ["a", "b"]
    with pytest.raises(Exception, match="no column 'text'"):
        list(text_table(path, "text"))


def test_kill_9_then_resume_equals_a_clean_run(tiny_repo, tmp_path):
    images = tmp_path / "many"
    rng = np.random.default_rng(1)
    images.mkdir()
    for i in range(800):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
            images / f"{i:03d}.png"
        )
    killed_cache, clean_cache = tmp_path / "killed", tmp_path / "clean"
    cmd = [sys.executable, "-m", "embedder.features.cli", "export", "--images", str(images),
           "--repo", str(tiny_repo), "--model", "tiny_image", "--cache", str(killed_cache),
           "--batch-size", "4", "--shard-rows", "8", "--workers", "1", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(killed_cache.rglob("shard-*.parquet"))) < 3:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written = len(list(killed_cache.rglob("shard-*.parquet")))
    assert 3 <= written < 100, "the kill must land in the middle of the run (100 shards in all)"
    resumed = export_features(image_folder(images), config(tiny_repo, killed_cache))
    assert resumed.from_cache >= 3 * 8 and resumed.embedded + resumed.from_cache == 800
    clean = export_features(image_folder(images), config(tiny_repo, clean_cache))
    k1, x1, _, s1 = rows_by_key(resumed.dataset)
    k2, x2, _, s2 = rows_by_key(clean.dataset)
    assert len(k1) == len(set(k1)) == 800  # nothing embedded twice, nothing lost
    np.testing.assert_array_equal(k1, k2)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_allclose(x1, x2, atol=1e-5)


def assert_same_rows(dataset_a, dataset_b):
    ka, xa, ya, _ = rows_by_key(dataset_a)
    kb, xb, yb, _ = rows_by_key(dataset_b)
    np.testing.assert_array_equal(ka, kb)
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_allclose(xa, xb, atol=1e-5)


def test_preparing_in_worker_processes_equals_threads(tiny_repo, images, tmp_path):
    """On a GPU items are read and decoded in worker processes (threads are GIL-bound there):
    the same rows, the same failures, and the keys already cached skip their decoding."""
    threads = export_features(image_folder(images, True),
                              config(tiny_repo, tmp_path / "a", prepare_processes=False))  # fmt: skip
    cfg = config(tiny_repo, tmp_path / "b", prepare_processes=True)
    processes = export_features(image_folder(images, True), cfg)
    assert (processes.embedded, processes.failed, processes.duplicates) == (12, 2, 1)
    assert_same_rows(threads.dataset, processes.dataset)
    again = export_features(image_folder(images, True), cfg)
    assert (again.embedded, again.from_cache, again.failed) == (0, 12, 2)


def test_server_engine_equals_local(tiny_repo, tiny_server, images, tmp_path):
    local = export_features(image_folder(images, True), config(tiny_repo, tmp_path / "a"))
    remote = export_features(image_folder(images, True),
                             config(tiny_repo, tmp_path / "b", engine="server", server=tiny_server.target))  # fmt: skip
    assert (remote.embedded, remote.failed, remote.duplicates) == (12, 2, 1)
    assert_same_rows(local.dataset, remote.dataset)
    assert local.dataset.name == remote.dataset.name  # same model file and preprocessing


@pytest.mark.distributed
def test_ray_engine_equals_local(tiny_repo, images, tmp_path):
    pytest.importorskip("ray")
    local = export_features(image_folder(images, True), config(tiny_repo, tmp_path / "a"))
    on_ray = export_features(
        image_folder(images, True), config(tiny_repo, tmp_path / "r", engine="ray")
    )
    assert (on_ray.embedded, on_ray.failed, on_ray.duplicates) == (12, 2, 1)
    assert_same_rows(local.dataset, on_ray.dataset)
    again = export_features(
        image_folder(images, True), config(tiny_repo, tmp_path / "r", engine="ray")
    )
    assert (again.embedded, again.from_cache, again.duplicates, again.failed) == (0, 12, 1, 2)


@pytest.fixture
def untruncated_repo(tiny_repo, tmp_path):
    """tiny_text with truncation off: a text over its 16 tokens cannot be embedded."""
    import shutil

    folder = tmp_path / "repo" / "tiny_text" / "1"
    shutil.copytree(tiny_repo / "tiny_text" / "1", folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["preprocess"]["truncation"] = False
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path / "repo"


LONG_TEXT = " ".join(["word"] * 40)


@pytest.mark.parametrize(
    "engine", ["local", "server", pytest.param("ray", marks=pytest.mark.distributed)]
)
def test_a_text_too_long_fails_alone(untruncated_repo, tmp_path, engine):
    from server_helpers import running_server

    if engine == "ray":
        pytest.importorskip("ray")
    path = tmp_path / "t.csv"
    path.write_text(f"text\nthe cat sat\n{LONG_TEXT}\na cup of coffee\nthe dog\n")
    with contextlib.ExitStack() as stack:
        server = None
        if engine == "server":
            server = stack.enter_context(running_server(untruncated_repo)).target
        cfg = FeaturesConfig(repo=untruncated_repo, model="tiny_text", cache=tmp_path / "c",
                                batch_size=4, progress=False, engine=engine, server=server)  # fmt: skip
        summary = export_features(text_table(path, "text"), cfg)
    assert (summary.embedded, summary.failed) == (3, 1)  # one batch of four, one bad text
    failures = pq.ParquetDataset(sorted((summary.dataset / "failures").glob("*.parquet")))
    [failure] = failures.read().to_pylist()
    assert failure["source"] == "t.csv:1"
    assert failure["reason"].endswith("tokens, over max_length 16")
    assert sorted(load_features(summary.dataset).sources) == ["t.csv:0", "t.csv:2", "t.csv:3"]


def test_missing_model_is_a_clear_error(tiny_repo, images, tmp_path):
    from embedder.core.errors import EmbedderError

    with pytest.raises(EmbedderError, match="no model 'nope'"):
        export_features(
            image_folder(images), FeaturesConfig(repo=tiny_repo, model="nope", cache=tmp_path)
        )


def test_summary_keys_select_one_dataset_from_a_shared_cache(tiny_repo, images, tmp_path):
    cache = tmp_path / "c"
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (40, 40), (9, 9, 9)).save(other / "x.png")
    export_features(image_folder(other), config(tiny_repo, cache))
    summary = export_features(image_folder(images, True), config(tiny_repo, cache))
    assert len(load_features(summary.dataset).keys) == 13  # both datasets live in the cache
    mine = load_features(summary.dataset, keys=summary.keys)
    assert sorted(mine.keys) == sorted(summary.keys) and len(summary.keys) == 12
    assert set(mine.y) == {"cats", "dogs"}


def test_run_file_carries_this_datasets_labels(tiny_repo, images, tmp_path):
    """A later export of the same images under other labels gets its own labels from its run."""
    cache = tmp_path / "c"
    first = export_features(
        image_folder(images, True), config(tiny_repo, cache, run_name="animals")
    )
    relabelled = [
        it.__class__(it.source, "pets", it.path, it.text) for it in image_folder(images, True)
    ]
    second = export_features(relabelled, config(tiny_repo, cache, run_name="pets"))
    assert second.from_cache == 12 and second.embedded == 0
    assert set(load_features(first.run_file).y) == {"cats", "dogs"}
    assert set(load_features(second.run_file).y) == {"pets"}
    assert first.run_file.name == "animals.parquet" and len(load_features(second.run_file).X) == 12


def test_failures_are_retried_but_recorded_once(tiny_repo, images, tmp_path):
    cfg = config(tiny_repo, tmp_path / "c")
    first = export_features(image_folder(images, True), cfg)
    export_features(image_folder(images, True), cfg)
    rows = pq.ParquetDataset(sorted((first.dataset / "failures").glob("*.parquet"))).read()
    assert rows.num_rows == 2


def test_rows_written_twice_by_two_writers_load_once(tiny_repo, images, tmp_path):
    from embedder.cache import EmbeddingCache

    summary = export_features(image_folder(images, True), config(tiny_repo, tmp_path / "c"))
    f = load_features(summary.dataset)
    ident = json.loads((summary.dataset / "dataset.json").read_text())
    from embedder.cache import CacheIdentity

    second_writer = EmbeddingCache(tmp_path / "c", CacheIdentity(**ident))
    second_writer.append(list(f.keys[:3]), f.X[:3], [None] * 3, [None] * 3)
    assert len(load_features(summary.dataset).keys) == 12


def test_server_engine_keeps_to_the_server_limits_and_fails_an_item_too_big(tiny_repo, tmp_path):
    from server_helpers import running_server

    rng = np.random.default_rng(3)
    folder = tmp_path / "noise"
    folder.mkdir()
    for i, side in enumerate((150, 150, 150, 150, 400)):  # noise PNGs: ~68 kB each, ~480 kB
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    local = export_features(image_folder(folder), config(tiny_repo, tmp_path / "a"))
    with running_server(tiny_repo, max_message_bytes=200_000, max_items_per_request=2) as server:
        remote_config = FeaturesConfig(repo=tiny_repo, model="tiny_image", cache=tmp_path / "b",
                                          engine="server", server=server.target, progress=False)  # fmt: skip
        remote = export_features(image_folder(folder), remote_config)
    assert (remote.embedded, remote.failed) == (4, 1)
    [failure] = pq.read_table(next((remote.dataset / "failures").glob("*.parquet"))).to_pylist()
    assert failure["source"].endswith("4.png")
    assert failure["reason"].endswith("bytes, over the server's message limit of 200000")
    local_rows, remote_rows = rows_by_key(local.dataset), rows_by_key(remote.dataset)
    keep = np.isin(local_rows[0], remote_rows[0])
    np.testing.assert_allclose(local_rows[1][keep], remote_rows[1], atol=1e-5)


def test_a_file_that_cannot_be_read_is_recorded_once_over_reruns(tiny_repo, images, tmp_path):
    from embedder.core.sources import path_list

    listing = tmp_path / "list.txt"
    listing.write_text(f"{images / 'cats' / '0.jpg'}\n{images / 'cats' / 'missing.png'}\n")
    cfg = config(tiny_repo, tmp_path / "c")
    for _ in range(3):
        summary = export_features(path_list(listing), cfg)
        assert (summary.failed, summary.embedded + summary.from_cache) == (1, 1)
    failures = pq.ParquetDataset(sorted((summary.dataset / "failures").glob("*.parquet")))
    [failure] = failures.read().to_pylist()
    assert failure["source"].endswith("missing.png") and "cannot read file" in failure["reason"]


def test_bad_rows_of_a_text_table_fail_alone(tiny_repo, tmp_path):
    import pyarrow as pa

    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text('{"text": "the cat sat"}\n{not json\n["a list"]\n{"label": "x"}\n'
                     '{"text": ["a", "list"]}\n{"text": "a dog"}\n')  # fmt: skip
    binary = tmp_path / "binary.parquet"
    pq.write_table(pa.table({"text": pa.array([b"the cat sat", b"\xff\xfe bad"], pa.binary())}),
                   binary)  # fmt: skip
    reasons = {}
    for source in (jsonl, binary):
        cfg = FeaturesConfig(repo=tiny_repo, model="tiny_text", cache=tmp_path / "c",
                                progress=False)  # fmt: skip
        summary = export_features(text_table(source, "text"), cfg)
        failures = pq.ParquetDataset(sorted((summary.dataset / "failures").glob("*.parquet")))
        reasons |= {r["source"]: r["reason"] for r in failures.read().to_pylist()}
    assert set(reasons) == {"rows.jsonl:1", "rows.jsonl:2", "rows.jsonl:3", "rows.jsonl:4",
                            "binary.parquet:1"}  # fmt: skip
    assert reasons["rows.jsonl:1"].startswith("not JSON")
    assert reasons["rows.jsonl:2"] == "a JSON list, not an object"
    assert reasons["rows.jsonl:3"] == "no 'text' field"
    assert reasons["binary.parquet:1"] == "not valid UTF-8"
    # the binary column's good row is the same text, hence the same key, as the JSONL's first
    assert summary.from_cache == 1 and summary.embedded == 0


def test_default_batch_size_follows_the_model_and_engine(tiny_repo, tmp_path):
    from embedder.features.config import batch_size_for

    def size(model, **kw):
        manifest = Manifest.read(tiny_repo / model / "1")
        cfg = FeaturesConfig(repo=tiny_repo, model=model, cache=tmp_path, provider="cpu", **kw)
        return batch_size_for(cfg, manifest)

    assert (size("tiny_image"), size("tiny_text")) == (4, 32)  # measured fastest on a CPU
    assert size("tiny_image", engine="server", server="x:1") == 32  # items per request
    assert size("tiny_image", batch_size=7) == 7


def test_a_model_that_fails_to_load_ends_the_run_with_its_error(tiny_repo, images, tmp_path):
    import shutil

    from embedder.core.manifest import ManifestError

    folder = tmp_path / "repo" / "tiny_image" / "1"
    shutil.copytree(tiny_repo / "tiny_image" / "1", folder)
    with open(folder / "model.onnx", "ab") as f:
        f.write(b"tampered")
    cfg = FeaturesConfig(repo=tmp_path / "repo", model="tiny_image", cache=tmp_path / "c",
                            batch_size=1, workers=2, progress=False)  # fmt: skip
    with pytest.raises(ManifestError, match="does not match the manifest"):
        export_features(image_folder(images, True), cfg)


def failure_reasons(dataset) -> dict[str, str]:
    files = sorted((dataset / "failures").glob("*.parquet"))
    rows = pq.ParquetDataset(files).read().to_pylist() if files else []
    return {r["source"]: r["reason"] for r in rows}


def test_a_lone_surrogate_and_a_huge_csv_field_fail_alone(tiny_repo, tmp_path):
    """Fault campaign: each used to abort the whole export with nothing written."""
    from embedder.core.sources import MAX_FIELD_CHARS

    jsonl = tmp_path / "texts.jsonl"
    jsonl.write_text('{"text": "the cat sat"}\n{"text": "bad \\ud800 text"}\n{"text": "a dog"}\n')
    csv_file = tmp_path / "texts.csv"
    huge = "cat " * (MAX_FIELD_CHARS // 4 + 1)
    csv_file.write_text(f"text\nthe cat sat\n{huge}\na cup of coffee\n")
    reasons = {}
    for path in (jsonl, csv_file):
        cfg = FeaturesConfig(repo=tiny_repo, model="tiny_text", cache=tmp_path / path.suffix,
                                progress=False)  # fmt: skip
        summary = export_features(text_table(path), cfg)
        assert (summary.embedded, summary.failed) == (2, 1)
        reasons.update(failure_reasons(summary.dataset))
    assert list(reasons) == ["texts.jsonl:1", "texts.csv:1"]
    assert "surrogate" in reasons["texts.jsonl:1"]
    assert f"over {MAX_FIELD_CHARS:,} characters" in reasons["texts.csv:1"]


@pytest.mark.parametrize("closed", [False, True])
def test_a_stray_quote_in_a_csv_never_loses_rows_silently(tiny_repo, tmp_path, closed):
    """A quote that opens a field swallows the following lines into it; the campaign's 21-row
    file came back as 2 items and 0 failures."""
    lines = ["text,label", *(f"sentence {i} about the cat,l{i % 3}" for i in range(21))]
    lines[3] = '"sentence 2 has a stray quote,l2'
    if closed:  # the quote happens to be closed further down, right before a comma
        lines[13] = 'sentence 12",l0'
    path = tmp_path / "quotes.csv"
    path.write_text("\n".join(lines) + "\n")
    cfg = FeaturesConfig(repo=tiny_repo, model="tiny_text", cache=tmp_path / "c",
                            progress=False)  # fmt: skip
    summary = export_features(text_table(path, "text", "label"), cfg)
    assert summary.failed == 1
    (reason,) = failure_reasons(summary.dataset).values()
    assert "unbalanced quote" in reason and "line 4" in reason
    assert summary.embedded == (10 if closed else 2)
