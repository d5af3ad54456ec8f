"""Where batch inputs come from: an image folder, a table of texts, or a list of paths.

Each yields `SourceItem`s lazily; bytes are read by the workers that decode them, so a huge
folder costs no memory up front.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from embedder.core.errors import EmbedderError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
# A CSV field longer than this fails its row alone (the csv module's own limit is 131,072).
MAX_FIELD_CHARS = 1 << 20


class SourceError(EmbedderError):
    """The input folder or table cannot be read as asked."""


@dataclass(frozen=True)
class SourceItem:
    source: str  # file path, or "<table>:<row>" for texts
    label: str | None
    path: Path | None = None  # image file to read
    text: str | None = None  # or the text itself
    error: str | None = None  # or why this row holds nothing to embed


def image_folder(root: str | Path, labels_from_folders: bool = False) -> Iterator[SourceItem]:
    """Every image file under `root` (recursive, sorted); label = first sub-folder name."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root} is not a folder of images")
    found = []  # path parts below root: sorted like Paths, listed without a Path per file
    for folder, _, names in os.walk(root):
        below = Path(folder).relative_to(root).parts
        found += [(*below, n) for n in names if os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES]
    for parts in sorted(found):
        path = root.joinpath(*parts)
        if labels_from_folders and len(parts) < 2:
            raise SourceError(f"{path} is not inside a class sub-folder of {root}")
        yield SourceItem(str(path), parts[0] if labels_from_folders else None, path=path)


def path_list(list_file: str | Path) -> Iterator[SourceItem]:
    """A text file with one image path per line (relative paths: relative to the list file)."""
    list_file = Path(list_file)
    for line in list_file.read_text(encoding="utf-8-sig").split("\n"):  # only \n ends a line
        if line.strip():
            path = Path(line.strip())
            path = path if path.is_absolute() else list_file.parent / path
            yield SourceItem(str(path), None, path=path)


def text_table(path: str | Path, text_column: str = "text", label_column: str | None = None):
    """Texts from a CSV, JSONL or Parquet file. A row without a usable text (empty, missing,
    not UTF-8, not JSON) becomes a failed item; a file without the column is an error."""
    path = Path(path)
    rows = _read_rows(path, [c for c in (text_column, label_column) if c])
    for i, row in enumerate(rows):
        source = f"{path.name}:{i}"
        if isinstance(row, str):  # why the row could not be read
            yield SourceItem(source, None, error=row)
            continue
        label = row.get(label_column) if label_column else None
        label = None if label is None else str(label)
        if text_column not in row:
            yield SourceItem(source, label, error=f"no {text_column!r} field")
            continue
        text = row[text_column]
        if isinstance(text, bytes):  # a binary column: bytes that are not UTF-8 fail later
            text = text.decode("utf-8", "surrogateescape")
        if isinstance(text, dict | list):
            yield SourceItem(source, label, error=f"{text_column!r} holds a {type(text).__name__}")
        else:
            yield SourceItem(source, label, text="" if text is None else str(text))


def _read_rows(path: Path, columns: list[str]) -> Iterator[dict | str]:
    """Rows as dicts; a row that cannot be read as one yields the reason instead.
    utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first column's name;
    surrogateescape: a line that is not UTF-8 becomes one failed item, not a failed run."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        _check_columns(path, table.column_names, columns)
        yield from table.select(columns).to_pylist()
    elif suffix in (".jsonl", ".ndjson"):
        with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
            first = True
            for line in f:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield f"not JSON: {exc}"
                    continue
                if not isinstance(row, dict):
                    yield f"a JSON {type(row).__name__}, not an object"
                    continue
                if first:  # a column the first object lacks is a typo, not a bad row
                    _check_columns(path, list(row), columns)
                    first = False
                yield row
    elif suffix in (".csv", ".tsv"):
        with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
            yield from _csv_rows(path, f, "\t" if suffix == ".tsv" else ",", columns)
    else:
        raise SourceError(f"{path}: use a .csv, .tsv, .jsonl or .parquet file of texts")


def _csv_rows(path: Path, f, delimiter: str, columns: list[str]) -> Iterator[dict | str]:
    """Strict CSV: a quote that is never closed, or closed in the middle of a field, fails its
    row instead of silently swallowing the lines after it; so does a row whose field holds
    several lines that each look like a row of their own (a quote closed further down)."""
    import csv

    csv.field_size_limit(MAX_FIELD_CHARS)
    reader = csv.DictReader(f, delimiter=delimiter, strict=True)
    _check_columns(path, reader.fieldnames or [], columns)
    width = len(reader.fieldnames or [])
    while True:
        first = reader.reader.line_num + 1  # (DictReader's own line_num lags on errors)
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if "field larger" in str(exc):
                yield f"a field over {MAX_FIELD_CHARS:,} characters (line {first})"
            else:
                yield (f"from line {first} to line {reader.reader.line_num}: {exc}; an "
                       "unbalanced quote (\") may have merged rows - fix the quoting")  # fmt: skip
            continue
        if reader.reader.line_num > first and _merged(row, delimiter, width):
            last = reader.reader.line_num
            yield (f"from line {first} to line {last}, read as one row: an unbalanced quote "
                   f"(\") at line {first} merged rows - fix the quoting")  # fmt: skip
            continue
        yield row


def _merged(row: dict, delimiter: str, width: int) -> bool:
    """Whether a field's inner lines parse as whole rows: rows swallowed by a stray quote."""
    import csv

    for value in row.values():
        inner = value.split("\n")[1:-1] if isinstance(value, str) else []
        rows = sum(len(next(csv.reader([line], delimiter=delimiter), [])) == width
                   for line in inner)  # fmt: skip
        if inner and rows * 2 >= len(inner):
            return True
    return False


def _check_columns(path: Path, have: list[str], want: list[str]) -> None:
    missing = [c for c in want if c not in have]
    if missing:
        raise SourceError(f"{path} has no column {missing[0]!r}; columns: {', '.join(have)}")
