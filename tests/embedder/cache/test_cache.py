"""The Parquet cache: round trip, plain-Parquet interop, identity checks, atomic shards."""

import threading

import numpy as np
import pyarrow.parquet as pq
import pytest

from embedder.cache import CacheError, CacheIdentity, EmbeddingCache, load_features

IDENT = CacheIdentity("m", "1", 8, "a" * 64, "b" * 64)


def _fill(root, n=50, shards=3):
    cache = EmbeddingCache(root, IDENT)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, 8)).astype(np.float32)
    keys = [f"k{i:03d}" for i in range(n)]
    labels = [f"c{i % 3}" for i in range(n)]
    for part in np.array_split(np.arange(n), shards):
        cache.append([keys[i] for i in part], X[part], [labels[i] for i in part],
                     [f"src{i}" for i in part])  # fmt: skip
    return cache, X, keys, labels


def test_round_trip_without_python_loops(tmp_path):
    cache, X, keys, labels = _fill(tmp_path)
    f = load_features(cache.folder)
    order = np.argsort(f.keys)
    np.testing.assert_array_equal(f.X[order], X)
    assert f.X.dtype == np.float32 and f.X.flags["C_CONTIGUOUS"]
    assert list(f.y[order]) == labels and list(f.keys[order]) == keys
    assert len(cache.shard_files()) == 3


def test_plain_parquet_readers_need_no_project_code(tmp_path):
    import duckdb
    import pandas as pd

    cache, X, keys, _ = _fill(tmp_path)
    folder = cache.folder / "embeddings"
    field = pq.read_schema(cache.shard_files()[0]).field("embedding")
    assert field.type.list_size == 8 and str(field.type.value_type) == "float"
    frame = pd.read_parquet(folder).sort_values("key")
    np.testing.assert_array_equal(np.stack(frame["embedding"].to_numpy()), X)
    query = f"select count(*), max(len(embedding)) from '{folder}/*.parquet'"
    ((count, dim),) = duckdb.sql(query).fetchall()
    assert (count, dim) == (50, 8)
    meta = pq.read_schema(cache.shard_files()[0]).metadata[b"embedder"]
    assert b'"model": "m"' in meta


def test_reopen_knows_its_keys_and_refuses_another_model(tmp_path):
    cache, *_ = _fill(tmp_path)
    again = EmbeddingCache(tmp_path, IDENT)
    assert len(again.keys) == 50
    imposter = CacheIdentity("m", "1", 8, "a" * 64, "b" * 64)
    (again.folder / "dataset.json").write_text('{"model": "other"}')
    with pytest.raises(CacheError, match="belongs to"):
        EmbeddingCache(tmp_path, imposter)


def test_no_temporary_files_left_and_torn_temp_ignored(tmp_path):
    cache, *_ = _fill(tmp_path)
    (cache.folder / "embeddings" / ".shard-dead.parquet.tmp").write_bytes(b"half a shard")
    assert not [p for p in cache.folder.rglob("*.tmp") if not p.name.startswith(".shard-dead")]
    assert load_features(cache.folder).X.shape == (50, 8)  # the torn temp file is not read


def test_failures_table(tmp_path):
    cache, *_ = _fill(tmp_path)
    cache.append_failures([("kx", "bad.jpg", "cannot decode image")])
    again = EmbeddingCache(tmp_path, IDENT)
    assert again.failed == {"kx"}
    assert load_features(cache.folder).X.shape == (50, 8)  # failures are not features


def test_empty_cache_is_a_clear_error(tmp_path):
    with pytest.raises(CacheError, match="run the batch export first"):
        load_features(EmbeddingCache(tmp_path, IDENT).folder)


def test_many_openers_of_a_new_dataset_at_once(tmp_path):
    """Each opener writes dataset.json under a name of its own; a shared name made some fail."""
    start = threading.Barrier(8)
    errors = []

    def open_cache():
        start.wait()
        try:
            EmbeddingCache(tmp_path, IDENT)
        except Exception as exc:  # collected: an exception in a thread would be lost
            errors.append(exc)

    threads = [threading.Thread(target=open_cache) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    folder = EmbeddingCache(tmp_path, IDENT).folder
    assert sorted(p.name for p in folder.iterdir()) == ["dataset.json"]


def _writer(root, worker: int, start) -> None:
    """One process appending its own rows (and some shared keys) in many small shards."""
    cache = EmbeddingCache(root, IDENT)
    rng = np.random.default_rng(worker)
    start.wait()
    for shard in range(20):
        keys = [f"w{worker}-{shard}-{i}" for i in range(5)] + [f"shared-{shard}"]
        cache.append(keys, rng.standard_normal((6, 8)).astype(np.float32), ["x"] * 6,
                     ["s"] * 6)  # fmt: skip


def test_several_processes_write_one_dataset_at_once(tmp_path):
    """`embedder-serve --workers N --cache` and parallel batch exports: each writer's shards
    have names of their own and land whole, so every row of every writer is readable after."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    start = context.Barrier(4)
    writers = [context.Process(target=_writer, args=(tmp_path, w, start)) for w in range(4)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(60)
        assert w.exitcode == 0
    folder = EmbeddingCache(tmp_path, IDENT).folder
    shards = list((folder / "embeddings").glob("*.parquet"))
    assert len(shards) == 80 and not list(folder.rglob("*.tmp*"))
    features = load_features(folder)
    expected = {f"w{w}-{s}-{i}" for w in range(4) for s in range(20) for i in range(5)}
    assert set(features.keys) == expected | {f"shared-{s}" for s in range(20)}
    assert len(features.keys) == len(set(features.keys))  # a key written twice is read once
