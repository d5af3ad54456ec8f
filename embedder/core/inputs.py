"""Turn request items into model-ready arrays, and arrays into a batch, per the manifest.

Every error names the item's index, so a caller can find the one bad image among hundreds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from embedder.core.errors import InputError, echo
from embedder.core.manifest import ImagePreprocess, Manifest
from embedder.core.preprocess import (
    DEFAULT_MAX_PIXELS,
    TextTokenizer,
    decode_image,
    pad_token_ids,
    preprocess_image_bytes,
    resize_and_crop,
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

    def image(self, index: int, item: RawItem) -> np.ndarray | tuple[np.ndarray, ...]:
        """The model's pixels for an image: one array, or for a graph of two backbones one per
        pixel input, from one decode."""
        try:
            if item.kind == "tensor":
                return self._tensor(item.value)
            if not self.manifest.extra_inputs:
                return preprocess_image_bytes(item.value, self.manifest.preprocess,
                                              self.max_pixels)  # fmt: skip
            configs = self.image_inputs()
            shortest = min(c.resize_shorter for c in configs.values())
            decoded = decode_image(item.value, self.max_pixels, shortest)
            return tuple(resize_and_crop(decoded, c) for c in configs.values())
        except InputError as exc:
            raise exc.at(index, item.kind) from exc

    def image_inputs(self) -> dict[str, ImagePreprocess]:
        """Each pixel input of the graph with its resize and crop."""
        return {"pixels": self.manifest.preprocess, **self.manifest.extra_inputs}

    def blank(self) -> np.ndarray | tuple[np.ndarray, ...]:
        """One valid item (zeros; a short text's tokens for a text model): what warm-ups run."""
        if self.manifest.modality == "text":
            return self.texts(["warm up the encoder"])[0]
        blanks = tuple(np.zeros((*c.size, 3), np.uint8) for c in self.image_inputs().values())
        return blanks if self.manifest.extra_inputs else blanks[0]

    def _tensor(self, array: np.ndarray) -> np.ndarray:
        if self.manifest.extra_inputs:
            raise InputError("this model runs two backbones, each with its own resize and "
                             "crop: send the encoded image, not pixels")  # fmt: skip
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

    def collate(self, arrays: list) -> dict[str, np.ndarray]:
        if self.manifest.modality == "text":
            return pad_token_ids(arrays)
        if self.manifest.extra_inputs:
            return {name: np.stack([a[i] for a in arrays])
                    for i, name in enumerate(self.image_inputs())}  # fmt: skip
        return {"pixels": np.stack(arrays)}


MAX_ELEMENTS = 1 << 31  # of one tensor: the message size limit bounds real requests first


def checked_shape(shape, what: str) -> int:
    """The element count of `shape`, a list of sizes >= 0 with none over MAX_ELEMENTS; counted
    in Python integers, so no absurd shape overflows to a small count."""
    if not isinstance(shape, list | tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_ELEMENTS for d in shape
    ):
        raise InputError(f"{what}: shape must be a list of sizes from 0 to {MAX_ELEMENTS}, "
                         f"not {echo(shape)}")  # fmt: skip
    count = 1
    for d in shape:
        count *= d
    if count > MAX_ELEMENTS:
        raise InputError(f"{what}: shape {echo(list(shape))} holds too many elements")
    return count


def check_item_count(n: int, limit: int) -> None:
    """A request's number of items against the server's limit, before anything is read."""
    if n == 0:
        raise InputError("empty request: send at least one item")
    if n > limit:
        raise InputError(f"{n} items, over the limit of {limit} per request; split it")


def tensor_from_bytes(data: bytes, shape: list[int], dtype: str, index: int) -> np.ndarray:
    try:
        dt = np.dtype(dtype).newbyteorder("<")
    except TypeError:
        dt = None
    if dt is None or dt.kind not in "biuf":
        raise InputError(f"bad tensor: {echo(dtype)} is not a numeric dtype such as 'uint8'",
                         index, "tensor")  # fmt: skip
    try:
        count = checked_shape(list(shape), "tensor")
    except InputError as exc:
        raise exc.at(index, "tensor") from exc
    if count * dt.itemsize != len(data):
        raise InputError(f"bad tensor: {len(data)} bytes cannot hold {echo(dtype)} "
                         f"{echo(list(shape))}", index, "tensor")  # fmt: skip
    return np.frombuffer(data, dtype=dt).reshape(shape).astype(dt.newbyteorder("="), copy=False)
