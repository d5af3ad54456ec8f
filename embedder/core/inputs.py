"""Turn request items into model-ready arrays, and arrays into a batch, per the manifest.

Every error names the item's index, so a caller can find the one bad image among hundreds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from embedder.core.errors import InputError, echo, shorten
from embedder.core.manifest import ImagePreprocess, Manifest
from embedder.core.preprocess import (
    DEFAULT_MAX_PIXELS,
    TextTokenizer,
    pad_token_ids,
    preprocess_image_bytes,
)

ItemKind = Literal["image", "text", "tensor"]


@dataclass(frozen=True)
class RawItem:
    kind: ItemKind
    value: bytes | str | np.ndarray


class Preprocessor:
    """Preprocessing for one model; thread-safe (PIL and tokenizers release the GIL)."""

    def __init__(self, manifest: Manifest, folder: Path, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.manifest, self.max_pixels = manifest, max_pixels
        self.tokenizer = None
        if manifest.modality == "text":
            self.tokenizer = TextTokenizer(
                folder / manifest.preprocess.tokenizer_file, manifest.preprocess
            )

    def check_modality(self, index: int, item: RawItem) -> None:
        modality, name = self.manifest.modality, self.manifest.name
        if modality == "image" and item.kind == "text":
            raise InputError(f"text sent to image model {name!r}; send image bytes", index, "text")
        if modality == "text" and item.kind != "text":
            raise InputError(f"{item.kind} sent to text model {name!r}; send text", index,
                             item.kind)  # fmt: skip

    def image(self, index: int, item: RawItem) -> np.ndarray:
        try:
            if item.kind == "tensor":
                return self._tensor(item.value)
            return preprocess_image_bytes(item.value, self.manifest.preprocess, self.max_pixels)
        except InputError as exc:
            raise exc.at(index, item.kind) from exc

    def _tensor(self, array: np.ndarray) -> np.ndarray:
        cfg: ImagePreprocess = self.manifest.preprocess
        expected = (*cfg.size, 3)
        if array.dtype != np.uint8 or array.shape != expected:
            raise InputError(
                f"tensor {array.dtype}{list(array.shape)} does not fit; this model takes "
                f"uint8{list(expected)} RGB pixels, resized and cropped as its manifest says"
            )
        return array

    def texts(self, texts: list[str]) -> list[np.ndarray]:
        return self.tokenizer.encode(texts)

    def collate(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        if self.manifest.modality == "text":
            return pad_token_ids(arrays)
        return {"pixels": np.stack(arrays)}


def tensor_from_bytes(data: bytes, shape: list[int], dtype: str, index: int) -> np.ndarray:
    try:
        dt = np.dtype(dtype).newbyteorder("<")
        count = int(np.prod(shape)) if shape else 0
        if count * dt.itemsize != len(data):
            raise ValueError(f"{len(data)} bytes cannot hold {echo(dtype)} {echo(list(shape))}")
        return np.frombuffer(data, dtype=dt).reshape(shape).astype(dt.newbyteorder("="), copy=False)
    except (TypeError, ValueError) as exc:
        raise InputError(f"bad tensor: {shorten(str(exc))}", index, "tensor") from exc
