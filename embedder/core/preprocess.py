"""Input preprocessing driven by the manifest: the same code runs at export, serving and batch time.

Images: decode -> apply EXIF orientation -> RGB -> resize the shorter side -> centre crop ->
uint8 HWC. Normalisation is not done here; it lives inside the ONNX graph.
Texts: tokenizer.json via `tokenizers`, truncation to the manifest's max length, padding to the
longest item of the batch.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from embedder.core.errors import EmbedderError, InputError
from embedder.core.manifest import ImagePreprocess, TextPreprocess

DEFAULT_MAX_PIXELS = 40_000_000
# A text is cut to this many characters per token of the model's max length before it is
# tokenised; English runs at 4-6 characters a token, so truncation keeps the same tokens.
CHARS_PER_TOKEN = 32
# Formats whose header gives the true size before any pixel is decoded (an ICO, for one, decodes
# its embedded PNG inside Image.open, before the pixel limit could refuse it).
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
_WIDE_GREY = ("I;16", "I;16L", "I;16B", "I")  # 16-bit greyscale (PNG, TIFF)

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def decode_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, shorter_side: int | None = None
) -> Image.Image:
    """Decode encoded bytes to an RGB image, refusing decompression bombs before decoding.

    With `shorter_side`, a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps
    its shorter side at least that long: the fast path for photos much larger than the model.
    """
    if not data:
        raise InputError("empty image bytes")
    try:
        img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        width, height = img.size
        if width * height > max_pixels:
            raise InputError(
                f"image is {width}x{height} = {width * height} pixels, over the limit of "
                f"{max_pixels}; downscale it or raise max_pixels"
            )
        if shorter_side and img.format == "JPEG":
            scale = shorter_side / min(width, height)
            if scale < 1:
                img.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
        ImageOps.exif_transpose(img, in_place=True)  # in place: no copy when upright
        if img.mode in _WIDE_GREY:  # convert() would clip 0..65535 to 255: scale instead
            img = Image.fromarray(np.minimum(np.asarray(img, np.uint32) >> 8, 255).astype(np.uint8))
        return img if img.mode == "RGB" else img.convert("RGB")
    except InputError:
        raise
    except UnidentifiedImageError as exc:
        raise InputError(
            f"cannot decode image: not one of the accepted formats ({', '.join(IMAGE_FORMATS)})"
        ) from exc
    except Exception as exc:  # PIL raises many types for corrupt or truncated data
        raise InputError(f"cannot decode image: {exc}") from exc


def resize_and_crop(img: Image.Image, cfg: ImagePreprocess) -> np.ndarray:
    """Resize so the shorter side is cfg.resize_shorter, then centre-crop to cfg.size.

    Done as one resize of the source box that the crop keeps, so no pixel outside the crop
    is ever resampled (about half the work of resizing the whole image first).
    """
    width, height = img.size
    scale = cfg.resize_shorter / min(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    out_h, out_w = cfg.size
    if new_w < out_w or new_h < out_h:
        raise InputError(f"resized image {new_w}x{new_h} is smaller than the crop {out_w}x{out_h}")
    left, top = (new_w - out_w) // 2, (new_h - out_h) // 2
    sx, sy = width / new_w, height / new_h
    box = (left * sx, top * sy, (left + out_w) * sx, (top + out_h) * sy)
    resized = img.resize((out_w, out_h), _RESAMPLE[cfg.interpolation], box=box)
    return np.asarray(resized, dtype=np.uint8)


def image_to_pixels(img: Image.Image | np.ndarray, cfg: ImagePreprocess) -> np.ndarray:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    return resize_and_crop(img if img.mode == "RGB" else img.convert("RGB"), cfg)


def preprocess_image_bytes(
    data: bytes, cfg: ImagePreprocess, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    return resize_and_crop(decode_image(data, max_pixels, cfg.resize_shorter), cfg)


class TextTokenizer:
    """Wraps a `tokenizers.Tokenizer` with the manifest's truncation and batch padding."""

    def __init__(self, tokenizer_path: str | Path, cfg: TextPreprocess):
        from tokenizers import Tokenizer

        self.cfg = cfg
        try:
            self._tok = Tokenizer.from_file(str(tokenizer_path))
        except Exception as exc:  # tokenizers raises a bare Exception on a file it cannot read
            raise EmbedderError(
                f"{tokenizer_path} cannot be read as a tokenizer ({exc}); re-export the model"
            ) from exc
        self._tok.no_padding()
        self.max_chars = cfg.max_length * CHARS_PER_TOKEN
        if cfg.truncation:
            self._tok.enable_truncation(max_length=cfg.max_length)
        else:
            self._tok.no_truncation()

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids per text, truncated, unpadded (batches are padded when they are formed)."""
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise InputError("empty text", i, "text")
        if any(len(t) > self.max_chars for t in texts):
            texts = [self._cut(i, t) for i, t in enumerate(texts)]
        # One text (the common single-item request, tokenised on the event loop): encode()
        # stays on this thread; encode_batch hands work to the tokenizer's thread pool.
        encodings = (
            [self._tok.encode(texts[0])] if len(texts) == 1 else self._tok.encode_batch(texts)
        )
        ids = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
        for i, row in enumerate(ids):
            if len(row) > self.cfg.max_length:
                raise InputError(f"{len(row)} tokens, over max_length {self.cfg.max_length}",
                                 i, "text")  # fmt: skip
        return ids

    def _cut(self, index: int, text: str) -> str:
        """A text cut to `max_chars` before tokenising (tokenising is linear in the length:
        5 MB took 2.2 s), at a space when there is one near the end: the tokens that survive
        truncation are the same unless a text averages over CHARS_PER_TOKEN characters a token.
        Without truncation the text is refused, as its tokens would be."""
        if len(text) <= self.max_chars:
            return text
        if not self.cfg.truncation:
            limit = f"{self.max_chars} ({self.cfg.max_length} tokens)"
            raise InputError(f"{len(text)} characters, over this model's {limit}; shorten it",
                             index, "text")  # fmt: skip
        cut = text[: self.max_chars]
        space = cut.rfind(" ", self.max_chars - 100)
        return cut[:space] if space > 0 else cut

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        return pad_token_ids(self.encode(texts))


def pad_token_ids(rows: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Pad to the longest row: input_ids and attention_mask, int64."""
    longest = max(len(r) for r in rows)
    ids = np.zeros((len(rows), longest), dtype=np.int64)
    mask = np.zeros((len(rows), longest), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}
