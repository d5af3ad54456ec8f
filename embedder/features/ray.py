"""Batch export on Ray Data: an actor pool, one onnxruntime session per actor.

Actors run the same reading, hashing and preprocessing code as the local engine; the driver
writes the cache, so deduplication, failures and atomic shards behave identically. Works on a
local `ray.init()` and on a cluster (`--ray-address auto` or `ray://head:10001`) where every
node can read the input paths and the model repository.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from embedder.cache import CacheIdentity, embedding_column
from embedder.core.errors import EmbedderError
from embedder.core.inputs import Preprocessor
from embedder.core.manifest import Manifest
from embedder.core.processes import children
from embedder.core.repository import model_folder
from embedder.core.sources import SourceItem
from embedder.features.config import FeaturesConfig, Summary, batch_size_for
from embedder.features.ledger import RunLedger, dataset_caches
from embedder.features.local import batch_session, planned_identities, session_identities
from embedder.features.prepare import Prepared, check_modality, make_preparer

log = logging.getLogger(__name__)


def embedding_columns(count: int) -> list[str]:
    """The output table's vector columns, one per cut point."""
    return [f"embedding.{i}" for i in range(count)]


class RayEmbedder:
    """Ray Data callable class: a session per actor, one Arrow table in, one out."""

    def __init__(self, config: FeaturesConfig, known: set[str],
                 identities: list[CacheIdentity]):  # fmt: skip
        threads = config.intra_op_threads or 1  # an actor holds one CPU
        manifest = Manifest.read(model_folder(config.repo, config.model, config.version))
        self.session = batch_session(replace(config, intra_op_threads=threads), manifest)
        self.dims = [i.dim for i in identities]
        if session_identities(self.session) != identities:  # a GPU node: fp16 rows
            raise EmbedderError(
                f"actor session runs {self.session.precision} on {self.session.providers}, "
                "not the model file the driver opened the cache for; use one provider"
            )
        self.known = known
        import ray

        self.node = ray.get_runtime_context().get_node_id()  # where the rows were embedded
        m, folder = self.session.manifest, self.session.folder
        self.pre = Preprocessor(m, folder, config.max_image_pixels)
        self.prepare = make_preparer(m, self.pre, known)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        for r in rows:
            r["path"] = r["path"] and Path(r["path"])
        items = [SourceItem(**r) for r in rows]
        prepared = [self.prepare(item) for item in items]
        todo = [p for p in prepared if p.error is None and p.key not in self.known]
        vectors = self._embed(todo)
        outs = [np.zeros((len(prepared), dim), np.float32) for dim in self.dims]
        status, reasons, row = [], [], 0
        for i, p in enumerate(prepared):
            if p.error is not None:
                status.append("failed"), reasons.append(p.error)
            elif p.key in self.known:
                status.append("cached"), reasons.append(None)
            else:
                for out, matrix in zip(outs, vectors, strict=True):
                    out[i] = matrix[row]
                row += 1
                status.append("ok"), reasons.append(None)
        columns = {
            "key": [p.key for p in prepared],
            "label": pa.array([p.item.label for p in prepared], pa.string()),
            "source": [p.item.source for p in prepared],
            "status": status,
            "reason": pa.array(reasons, pa.string()),
            "node": [self.node] * len(prepared),
        }  # plain Parquet vectors below, not Ray's tensor type
        names = embedding_columns(len(outs))
        return pa.table(
            columns | {n: embedding_column(o) for n, o in zip(names, outs, strict=True)}
        )

    def _embed(self, todo: list[Prepared]) -> list[np.ndarray]:
        if not todo:
            return [np.zeros((0, dim), np.float32) for dim in self.dims]
        return self.session.layer_features(self.pre.collate([p.array for p in todo]))


def _init_ray(config: FeaturesConfig):
    try:
        import ray
    except ImportError as exc:
        raise EmbedderError("the ray engine needs Ray: pip install 'embedder[ray]'") from exc
    if not ray.is_initialized():
        if config.ray_address:
            ray.init(address=config.ray_address, log_to_driver=False)
        else:
            start_local_ray(ray)
    return ray


def start_local_ray(ray, attempts: int = 2) -> None:
    """Start a local Ray node, once more if its start timed out.

    Ray gives a new node's raylet fixed waits (15 s for its agents' ports, 30 s to register):
    on a loaded machine a start can miss them (ray-project/ray#65983) and then succeed again.
    Ray raises before it keeps hold of the node, so ray.shutdown() cannot stop what that start
    left running; its processes are stopped here before the next try.
    """
    for attempt in range(1, attempts + 1):
        try:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            return
        except Exception as exc:
            if "timed out during startup" not in str(exc):
                raise
            ray.shutdown()
            stop_ray_children(ray)
            if attempt == attempts:
                raise EmbedderError(
                    f"Ray could not start a local node ({attempts} tries; its logs are in "
                    "/tmp/ray/session_latest/logs): retry on a less loaded machine, or start "
                    "Ray yourself (`ray start --head`) and pass --ray-address auto"
                ) from exc
            log.warning("Ray's local node timed out during startup; starting it again")


def stop_ray_children(ray) -> int:
    """Kills this process's children that run from Ray's package (the GCS server, the raylet,
    its monitors) and returns how many; Linux only (/proc), elsewhere none are found."""
    home = os.path.dirname(ray.__file__)
    ours = [pid for pid, command in children(os.getpid()) if home in command]
    for pid in ours:
        with contextlib.suppress(ProcessLookupError):  # ended meanwhile
            os.kill(pid, signal.SIGKILL)
    return len(ours)


def export_with_ray(items: list[SourceItem], config: FeaturesConfig) -> Summary:
    ray = _init_ray(config)
    # Known without loading the model; each actor checks its session against it.
    manifest = Manifest.read(model_folder(config.repo, config.model, config.version))
    check_modality(items, manifest)
    identities = planned_identities(manifest, config)
    batch_size = batch_size_for(config, manifest)
    datasets = dataset_caches(config.cache, manifest, identities)
    ledger = RunLedger(datasets, len(items), config.shard_rows, config.progress)
    rows = [{"source": it.source, "label": it.label, "path": str(it.path) if it.path else None,
             "text": it.text, "error": it.error} for it in items]  # fmt: skip
    known = ledger.known
    # Blocks of at least 256 rows (or 8 batches), and at least two per actor, so that every
    # actor has work even on a small set.
    per_block = max(256, batch_size * 8)
    blocks = max(1, min(len(rows), max(2 * config.ray_actors, len(rows) // per_block)))
    dataset = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
        RayEmbedder,
        fn_constructor_kwargs={"config": config, "known": known, "identities": identities},
        batch_size=batch_size,
        batch_format="pyarrow",
        concurrency=config.ray_actors,
        num_cpus=1,
    )
    # Rows come back in input order, as on the other engines: the first copy of a duplicate
    # keeps its label and source.
    dataset.context.execution_options.preserve_order = True
    try:
        for table in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            _collect(table, ledger)
    finally:
        ledger.flush()
    summary = ledger.finish(config.run_name)
    log.info("ray: rows embedded per node: %s", summary.nodes)
    return summary


def _collect(table: pa.Table, ledger: RunLedger) -> None:
    matrices = []
    for name in embedding_columns(len(ledger.caches)):
        vectors = table.column(name).combine_chunks()
        matrices.append(vectors.flatten().to_numpy().reshape(len(vectors), vectors.type.list_size))
    columns = table.select(["key", "label", "source", "status", "reason", "node"]).to_pylist()
    nodes = ledger.summary.nodes
    for i, row in enumerate(columns):
        error = row["reason"] if row["status"] == "failed" else None
        if ledger.admit(row["key"], row["label"], row["source"], error):
            ledger.embedded(row["key"], [m[i] for m in matrices], row["label"], row["source"])
            nodes[row["node"]] = nodes.get(row["node"], 0) + 1
