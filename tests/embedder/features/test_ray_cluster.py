"""Batch export on a real multi-node Ray cluster on this machine (tests/ray_cluster.py: a head
and two worker nodes, each in a network namespace of its own): the actors spread over the
nodes, and with one worker node killed mid-run the export completes and equals a clean run, no
row lost or duplicated."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from ray_cluster import NamespaceCluster, can_make_namespaces

from embedder.cache import load_features
from embedder.features import FeaturesConfig, export_features, image_folder

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.long,
    pytest.mark.skipif(not can_make_namespaces(), reason="needs root and `ip netns`"),
]

DRIVER = """
import json, logging, sys
from pathlib import Path
from embedder.features import FeaturesConfig, export_features, image_folder
repo, cache, address, images = sys.argv[1:5]
config = FeaturesConfig(model="tiny_image", repo=Path(repo), cache=Path(cache), engine="ray",
                        ray_address=address, ray_actors=2, batch_size=8, shard_rows=16,
                        progress=False)
s = export_features(image_folder(images, labels_from_folders=True), config)
print(json.dumps({"total": s.total, "embedded": s.embedded, "failed": s.failed,
                  "nodes": s.nodes, "run_file": str(s.run_file)}))
"""


def _images(folder: Path, count: int = 480) -> Path:
    """Large PNGs (decoding is most of the work), two classes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (50, 50, 3), np.uint8)
    for i in range(count):
        label = folder / ("even" if i % 2 == 0 else "odd")
        label.mkdir(parents=True, exist_ok=True)
        tile = np.roll(base, i, axis=(0, 1)) // (1 + i % 3)
        tile[0, 0] = (i % 256, i // 256, 7)  # every image distinct
        Image.fromarray(np.kron(tile, np.ones((16, 16, 1), np.uint8))).save(label / f"{i}.png")
    return folder


def _run(cluster: NamespaceCluster, repo: Path, cache: Path, images: Path) -> subprocess.Popen:
    return cluster.exec(0, [sys.executable, "-c", DRIVER, str(repo), str(cache), cluster.head,
                            str(images)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True)  # fmt: skip


def _finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _shard_rows(cache: Path) -> list[str]:
    shards = sorted(cache.glob("tiny_image/1/*/embeddings/*.parquet"))
    return [k for s in shards for k in pq.read_table(s, columns=["key"]).column("key").to_pylist()]


def test_export_spreads_over_the_nodes_and_survives_a_node_killed(tiny_repo, tmp_path):
    images = _images(tmp_path / "images")
    local = export_features(image_folder(images, labels_from_folders=True),
                            FeaturesConfig(model="tiny_image", repo=tiny_repo,
                                           cache=tmp_path / "local", progress=False))  # fmt: skip
    clean = load_features(local.run_file)
    with NamespaceCluster(nodes=3, worker_cpus=2) as cluster:
        whole = _finish(_run(cluster, tiny_repo, tmp_path / "whole", images))
        assert len(whole["nodes"]) == 2 and min(whole["nodes"].values()) > 0, whole["nodes"]

        proc = _run(cluster, tiny_repo, tmp_path / "killed", images)
        deadline = time.monotonic() + 300
        while not list((tmp_path / "killed").glob("tiny_image/1/*/embeddings/*.parquet")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        assert proc.poll() is None  # mid-run: rows are in, the run goes on
        assert cluster.kill(2) > 0  # a worker node dies: its raylet, its actors, all at once
        killed = _finish(proc)

    for summary, cache in ((whole, tmp_path / "whole"), (killed, tmp_path / "killed")):
        assert summary["failed"] == 0 and summary["embedded"] == len(clean.keys)
        got = load_features(summary["run_file"])
        assert list(got.keys) == list(clean.keys) and list(got.y) == list(clean.y)
        np.testing.assert_allclose(got.X, clean.X, atol=1e-6)
        rows = _shard_rows(cache)
        assert sorted(rows) == sorted(set(clean.keys))  # every row once: none lost, none twice
