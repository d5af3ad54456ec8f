"""The content-addressed embedding cache: Parquet shards, one dataset per model and preprocessing.

    <root>/<model>/<version>/<digest>/
        dataset.json            model, version, dim, model and preprocessing digests
        embeddings/*.parquet    key, embedding fixed_size_list<float32>[D], label, source
        failures/*.parquet      key, source, reason
        runs/<name>.parquet     one export run's inputs: key, label, source

The embeddings are content-addressed and shared by every dataset embedded with the model; a
run file says which rows make up one dataset and with which labels (`load_features(run_file)`).

`digest` hashes the sha256 of the ONNX file actually run with the manifest's preprocessing, so
a cache row's effective key is (model digest, preprocessing digest, sha256 of the raw input
bytes): the same bytes through another model or crop never collide. Shards are written to a
temporary name and renamed into place, so a killed run leaves no torn file; a rerun skips every
key already present. `embeddings/` is a plain Parquet dataset that pandas, polars or duckdb read
with no project code.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedder.core.errors import EmbedderError
from embedder.core.manifest import LayerOutput, Manifest

EMBEDDINGS, FAILURES, RUNS = "embeddings", "failures", "runs"
RUN_SCHEMA = pa.schema([("key", pa.string()), ("label", pa.string()), ("source", pa.string())])


class CacheError(EmbedderError):
    """The cache folder belongs to another model or is unreadable."""


def content_key(data: bytes | str) -> str:
    """sha256 of the raw input bytes (text: its UTF-8 bytes)."""
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


@dataclass(frozen=True)
class CacheIdentity:
    model: str
    version: str
    dim: int
    model_sha256: str  # of the ONNX file that computes the embeddings
    preprocess_sha256: str
    # A model exported at several layers: the cut point of this dataset ("": `features`, what
    # the model serves; the datasets of other layers are their own).
    output: str = ""

    @classmethod
    def of(cls, manifest: Manifest, model_sha256: str, layer: LayerOutput | None = None
           ) -> CacheIdentity:  # fmt: skip
        """The dataset of `layer` (default: `features`) computed by the file `model_sha256`."""
        preprocessing = asdict(manifest.preprocess)
        if manifest.extra_inputs:  # a graph of two backbones: both crops
            preprocessing["extra_inputs"] = {k: asdict(v) for k, v in manifest.extra_inputs.items()}
        pre = json.dumps(preprocessing, sort_keys=True).encode()
        served = layer is None or layer.output == "features"
        return cls(manifest.name, manifest.version, manifest.dim if served else layer.dim,
                   model_sha256, hashlib.sha256(pre).hexdigest(),
                   "" if served else layer.layer)  # fmt: skip

    @classmethod
    def all_of(cls, manifest: Manifest, model_sha256: str) -> list[CacheIdentity]:
        """One per cut point the graph outputs, shallowest first (one: `features`)."""
        return [cls.of(manifest, model_sha256, out) for out in manifest.feature_outputs()]

    @classmethod
    def of_session(cls, session) -> CacheIdentity:
        """The identity of what `session` (a core.runtime.ModelSession) computes: the file it
        runs at its precision."""
        m = session.manifest
        return cls.of(m, m.file_sha256(session.precision))

    @property
    def digest(self) -> str:
        both = f"{self.model_sha256}:{self.preprocess_sha256}"
        if self.output:
            both += f":{self.output}"
        return hashlib.sha256(both.encode()).hexdigest()[:16]


def schema(dim: int, identity: CacheIdentity | None = None) -> pa.Schema:
    fields = [
        pa.field("key", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
        pa.field("label", pa.string()),
        pa.field("source", pa.string()),
    ]
    metadata = {"embedder": json.dumps(asdict(identity))} if identity else None
    return pa.schema(fields, metadata=metadata)


FAILURE_SCHEMA = pa.schema([("key", pa.string()), ("source", pa.string()), ("reason", pa.string())])


def _private_name(stem: str) -> str:
    """A name no other process or thread writing into the same folder will pick."""
    return f"{stem}-{os.getpid()}-{threading.get_ident()}-{os.urandom(4).hex()}"


def _write_shard(table: pa.Table, folder: Path, prefix: str) -> Path:
    """A new shard under a name of its own."""
    return _write_atomically(table, folder / f"{_private_name(prefix)}.parquet")


def _write_atomically(table: pa.Table, final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{_private_name(final.stem)}.tmp"
    # Dictionary-encoding and compressing float vectors costs 5x the write and saves nothing.
    pq.write_table(
        table,
        tmp,
        use_dictionary=[c for c in ("label", "source", "reason") if c in table.column_names],
        compression={c: "none" if c == "embedding" else "snappy" for c in table.column_names},
    )
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)  # readers see the whole shard or none of it
    return final


def embedding_column(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """(N, D) float32 as Arrow's fixed_size_list<float32>[D]: plain Parquet any reader knows
    (not Ray's or numpy's tensor extension types)."""
    flat = pa.array(np.ascontiguousarray(vectors, np.float32).reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])


def embeddings_table(keys, vectors: np.ndarray, labels, sources, identity=None) -> pa.Table:
    dim = vectors.shape[1]
    column = embedding_column(vectors)
    return pa.Table.from_arrays(
        [pa.array(keys, pa.string()), column, pa.array(labels, pa.string()),
         pa.array(sources, pa.string())],
        schema=schema(dim, identity),
    )  # fmt: skip


def failure_id(key: str, source: str) -> str:
    """What a recorded failure is known by: its content key, or for an input that could not
    even be read (no key), its source."""
    return key or f"unread:{source}"


class EmbeddingCache:
    """One dataset folder; appends in shards; knows which keys it holds."""

    def __init__(self, root: str | Path, identity: CacheIdentity):
        self.identity = identity
        self.folder = Path(root) / identity.model / identity.version / identity.digest
        self._check_or_write_identity()
        (keys,) = self._read_columns(EMBEDDINGS, "key")
        self.keys: set[str] = set(keys)
        self.failed: set[str] = set(map(failure_id, *self._read_columns(FAILURES, "key", "source")))

    def _check_or_write_identity(self) -> None:
        path = self.folder / "dataset.json"
        if path.exists():
            found = {"output": "", **json.loads(path.read_text())}  # written before layers
            if found != asdict(self.identity):
                raise CacheError(f"{self.folder} belongs to {found}, not {asdict(self.identity)}")
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        # A temporary name of its own: two processes opening a new dataset at once each write a
        # whole file, and the last rename wins (the contents are the same).
        tmp = self.folder / f".{_private_name('dataset')}.tmp"
        tmp.write_text(json.dumps(asdict(self.identity), indent=2) + "\n")
        os.replace(tmp, path)

    def shard_files(self, kind: str = EMBEDDINGS) -> list[Path]:
        folder = self.folder / kind
        return sorted(folder.glob("*.parquet")) if folder.is_dir() else []

    def _read_columns(self, kind: str, *columns: str) -> list[list[str]]:
        files = self.shard_files(kind)
        if not files:
            return [[] for _ in columns]
        table = pq.ParquetDataset(files).read(columns=list(columns))
        return [table.column(c).to_pylist() for c in columns]

    def append(self, keys: list[str], vectors: np.ndarray, labels=None, sources=None) -> None:
        if not keys:
            return
        labels = labels if labels is not None else [None] * len(keys)
        sources = sources if sources is not None else [None] * len(keys)
        table = embeddings_table(keys, vectors, labels, sources, self.identity)
        _write_shard(table, self.folder / EMBEDDINGS, "shard")
        self.keys.update(keys)

    def append_failures(self, rows: list[tuple[str, str, str]]) -> None:
        if not rows:
            return
        keys, sources, reasons = zip(*rows, strict=True)
        table = pa.table({"key": keys, "source": sources, "reason": reasons}, FAILURE_SCHEMA)
        _write_shard(table, self.folder / FAILURES, "failed")
        self.failed.update(map(failure_id, keys, sources))

    def write_run(self, name: str, members: dict[str, tuple[str | None, str]]) -> Path:
        """runs/<name>.parquet: the keys of one dataset with their labels and sources."""
        if not name or "/" in name or name.startswith("."):
            raise CacheError(f"run name {name!r}: use a plain file name")
        keys = list(members)
        labels = [members[k][0] for k in keys]
        sources = [members[k][1] for k in keys]
        table = pa.table({"key": keys, "label": labels, "source": sources}, RUN_SCHEMA)
        return _write_atomically(table, self.folder / RUNS / f"{name}.parquet")

    def lookup(self) -> dict[str, np.ndarray]:
        """Every cached key -> its embedding (the server's in-memory view)."""
        if not self.shard_files():
            return {}
        features = load_features(self.folder)
        return dict(zip(features.keys, features.X, strict=True))


@dataclass(frozen=True)
class Features:
    X: np.ndarray  # (N, D) float32
    y: np.ndarray | None  # labels (object array of str) when every row has one
    keys: np.ndarray
    sources: np.ndarray


def dataset_folder(path: str | Path) -> Path:
    """The dataset folder (the one with dataset.json) that `path` is in or is."""
    path = Path(path).resolve()
    for folder in (path, *path.parents):
        if (folder / "dataset.json").is_file():
            return folder
    raise CacheError(f"{path} is not inside a cache dataset (no dataset.json found)")


def read_identity(path: str | Path) -> dict:
    return json.loads((dataset_folder(path) / "dataset.json").read_text())


def load_features(path: str | Path, keys=None) -> Features:
    """Features without a Python loop over rows, from a dataset folder (every row it holds), a
    run file `runs/<name>.parquet` (that dataset's rows and labels), or shards.

    `keys` (e.g. a run's `Summary.keys`) narrows the rows further.
    """
    path = Path(path)
    if not path.exists():
        raise CacheError(
            f"no features at {path}: it does not exist. Pass a run file "
            "(cache/<model>/<version>/<digest>/runs/<name>.parquet) or a dataset folder "
            "(cache/<model>/<version>/<digest>), as `embedder-features export` prints them"
        )
    run = None
    if path.is_file() and path.parent.name == RUNS:
        run = pq.read_table(path)
        path = path.parent.parent
    if (path / EMBEDDINGS).is_dir():
        path = path / EMBEDDINGS
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        one_dataset = path.name == EMBEDDINGS or (path / "dataset.json").exists()
        inside = [] if one_dataset or not path.is_dir() else sorted(path.glob("**/dataset.json"))
        if inside:  # a cache root or a model's folder: which of its datasets?
            found = ", ".join(str(p.parent) for p in inside[:5])
            raise CacheError(f"{path} holds {len(inside)} cached datasets, not one: pass one of "
                             f"them or its runs/<name>.parquet ({found})")  # fmt: skip
        raise CacheError(f"no embedding shards under {path}; run the batch export first")
    table = _unique_keys(pq.ParquetDataset(files).read())
    if run is not None:
        table = _join_run(run, table)
    if keys is not None:
        import pyarrow.compute as pc

        wanted = pa.array(list(keys), pa.string())
        table = table.filter(pc.is_in(table.column("key"), value_set=wanted))
    column = table.column("embedding").combine_chunks()
    if not pa.types.is_fixed_size_list(column.type):
        raise CacheError(f"{path}: 'embedding' is {column.type}, not fixed_size_list<float32>")
    X = column.flatten().to_numpy().reshape(len(column), column.type.list_size)
    labels = table.column("label")
    y = labels.to_numpy(zero_copy_only=False) if labels.null_count == 0 and len(labels) else None
    keys_out = table.column("key").to_numpy(zero_copy_only=False)
    sources = table.column("source").to_numpy(zero_copy_only=False)
    return Features(X.astype(np.float32, copy=False), y, keys_out, sources)


def _join_run(run: pa.Table, table: pa.Table) -> pa.Table:
    """The run's rows, in its order, with their embeddings (a vectorised lookup by key)."""
    keys = table.column("key").to_numpy(zero_copy_only=False).astype(str)
    wanted = run.column("key").to_numpy(zero_copy_only=False).astype(str)
    order = np.argsort(keys)
    pos = np.clip(np.searchsorted(keys, wanted, sorter=order), 0, max(len(keys) - 1, 0))
    rows = order[pos] if len(keys) else np.zeros(0, int)
    found = keys[rows] == wanted if len(keys) else np.zeros(len(wanted), bool)
    embedding = table.column("embedding").take(pa.array(rows[found]))
    run = run.filter(pa.array(found))
    return pa.table({"key": run.column("key"), "embedding": embedding,
                     "label": run.column("label"), "source": run.column("source")})  # fmt: skip


def _unique_keys(table: pa.Table) -> pa.Table:
    """Two writers (a server and an export) may both have stored a key: keep its first row."""
    keys = table.column("key").to_numpy(zero_copy_only=False)
    _, first = np.unique(keys, return_index=True)
    return table if len(first) == len(keys) else table.take(np.sort(first))
