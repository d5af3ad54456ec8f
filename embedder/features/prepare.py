"""Each source item read, hashed and preprocessed, in worker threads (or worker processes),
results in input order."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Container, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedder.cache import content_key
from embedder.core.errors import InputError
from embedder.core.inputs import Preprocessor, RawItem
from embedder.core.manifest import Manifest
from embedder.core.sources import SourceItem


@dataclass
class Prepared:
    """One item after reading, hashing and preprocessing (or the reason it failed)."""

    item: SourceItem
    key: str = ""
    array: np.ndarray | None = None
    raw: bytes | str | None = None  # what a server engine sends
    error: str | None = None


def read_item(item: SourceItem) -> Prepared:
    """Read bytes and hash them; text is validated here."""
    if item.error is not None:  # a row of the source that held no usable text
        return Prepared(item, "", error=item.error)
    if item.text is not None:
        try:
            raw = item.text.encode("utf-8")
        except UnicodeEncodeError:
            return _not_unicode(item)
        if not item.text.strip():
            return Prepared(item, content_key(raw), error="empty text")
        return Prepared(item, content_key(raw), raw=item.text)
    try:
        data = item.path.read_bytes()
    except OSError as exc:
        return Prepared(item, "", error=f"cannot read file: {exc.strerror or exc}")
    return Prepared(item, content_key(data), raw=data)


def _not_unicode(item: SourceItem) -> Prepared:
    """A text that cannot be UTF-8: bytes that were not UTF-8 (kept as surrogate escapes, so
    its key is the hash of those bytes), or a lone surrogate such as JSON's "\\ud800"."""
    try:
        return Prepared(item, content_key(item.text.encode("utf-8", "surrogateescape")),
                        error="not valid UTF-8")  # fmt: skip
    except UnicodeEncodeError:
        key = content_key(item.text.encode("utf-8", "surrogatepass"))
        return Prepared(item, key, error="holds a lone surrogate (such as \\ud800): not Unicode")


def check_modality(items: list[SourceItem], manifest: Manifest) -> None:
    """Texts for an image model, or images for a text model, are refused before any work."""
    texts = sum(item.text is not None for item in items)
    files = sum(item.path is not None for item in items)
    if manifest.modality == "image" and texts and not files:
        raise InputError(f"{manifest.name} is an image model and the source holds texts; "
                         "give --images (or --paths), or a text model")  # fmt: skip
    if manifest.modality == "text" and files and not texts:
        raise InputError(f"{manifest.name} is a text model and the source holds files; give "
                         "--texts (a table of texts), or an image model")  # fmt: skip


def make_preparer(manifest: Manifest, pre: Preprocessor | None, known: Container[str]):
    """Read, hash, skip keys `known` from earlier runs, then decode an image or tokenise a text
    with `pre` (local and Ray engines; None when a server preprocesses)."""

    def prepare(item: SourceItem) -> Prepared:
        prepared = read_item(item)
        if prepared.error or prepared.key in known:
            return prepared
        if manifest.modality == "image" and item.path is None:
            prepared.error = "text given to an image model"
        elif manifest.modality == "text" and item.text is None:
            prepared.error = "file given to a text model; pass a table of texts"
        elif pre is not None:  # one bad item (e.g. a text too long to embed) fails alone
            try:
                if manifest.modality == "image":
                    prepared.array = pre.image(0, RawItem("image", prepared.raw))
                else:
                    (prepared.array,) = pre.texts([item.text])
                prepared.raw = None
            except InputError as exc:
                prepared.error = exc.reason
        return prepared

    return prepare


_worker_prepare: Callable[[SourceItem], Prepared] | None = None  # in a worker process


def _start_worker(folder: Path, max_pixels: int, known: frozenset[str]) -> None:
    global _worker_prepare
    manifest = Manifest.read(folder)
    _worker_prepare = make_preparer(manifest, Preprocessor(manifest, folder, max_pixels), known)


def prepare_in_worker(part: list[SourceItem]) -> list[Prepared]:
    return [_worker_prepare(item) for item in part]


def process_pool(folder: Path, max_pixels: int, known: Container[str],
                 workers: int) -> ProcessPoolExecutor:  # fmt: skip
    """Worker processes that prepare items for `prepare_in_worker`: one process's threads are
    bound by the GIL (on a 16-core GPU machine, 16 threads decoded 1,408 images/s and tokenised
    680 texts/s; 16 processes 3,079 and 8,176). Forked where the OS can: the workers only read,
    hash and decode (never CUDA or onnxruntime), and a forked worker needs no re-import of the
    caller's script (spawn would run an unguarded script again, and fails from stdin)."""
    import multiprocessing

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                               initializer=_start_worker,
                               initargs=(folder, max_pixels, frozenset(known)))  # fmt: skip


def prepare_stream(items: list[SourceItem], run_part: Callable[[list], list[Prepared]],
                   pool: Executor, ahead: int, chunk: int = 8) -> Iterator[Prepared]:  # fmt: skip
    """`run_part` on `pool`, results in input order, at most about `ahead` items in flight.
    Items go to the pool `chunk` at a time: a hand-off per item would cost about as much as
    reading and hashing a cached one."""
    window: deque[Future] = deque()
    for start in range(0, len(items), chunk):
        window.append(pool.submit(run_part, items[start : start + chunk]))
        if len(window) * chunk >= ahead:
            yield from window.popleft().result()
    for future in window:
        yield from future.result()
