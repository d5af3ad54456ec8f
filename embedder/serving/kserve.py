"""KServe v2 / Open Inference Protocol: what the REST and gRPC forms share.

Tensors: a text model takes `text` (BYTES, [N]); an image model takes `image` (BYTES, [N],
encoded files) or `pixels` (UINT8, [N, H, W, 3], resized as the manifest says). The output is
`embedding` (FP32, [N, D]); a published backbone+heads model adds one FP32 [N, classes] output
per head, named after it, with its class names in the metadata's parameters. The REST and gRPC
modules only convert their wire forms to and from `Tensor`.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

import numpy as np

from embedder.core.errors import InputError
from embedder.engine.engine import Engine
from embedder.engine.model import LoadedModel

SERVER_NAME, SERVER_VERSION = "embedder", "0.1.0"
EMBEDDING = "embedding"
NUMPY = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
         "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
         "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}  # fmt: skip


@dataclass
class Tensor:
    name: str
    datatype: str  # BYTES or a key of NUMPY
    shape: list[int]
    data: np.ndarray | list[bytes]  # numbers as an array of `shape`; BYTES as a flat list
    parameters: dict = field(default_factory=dict)


MAX_ELEMENTS = 1 << 31  # of one tensor; the message size limit bounds real requests first


def checked_spec(name, datatype, shape) -> tuple[str, str, list[int], int]:
    """A tensor's name, datatype and shape as the protocol allows them, and its element count;
    anything else is the caller's InputError."""
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise InputError("an input's name and datatype must be strings")
    if datatype != "BYTES" and datatype not in NUMPY:
        raise InputError(f"input {name!r}: unknown datatype {datatype!r}")
    if not isinstance(shape, list | tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InputError(f"input {name!r}: shape must be a list of sizes >= 0, not {shape!r}")
    count = 1
    for d in shape:  # Python ints: no overflow to 0 on absurd shapes
        count *= d
    if count > MAX_ELEMENTS:
        raise InputError(f"input {name!r}: shape {list(shape)} holds too many elements")
    return name, datatype, list(shape), count


def decode_bytes(raw: bytes, name: str, count: int) -> list[bytes]:
    """`count` BYTES elements of a raw buffer: each a 4-byte little-endian length, then its
    bytes; more or fewer is the caller's error (found before reading far past `count`)."""
    out, at = [], 0
    while at < len(raw):
        if len(out) == count:
            raise InputError(f"input {name!r}: more BYTES elements than its shape holds")
        if at + 4 > len(raw):
            raise InputError(f"input {name!r}: a BYTES length prefix is cut short")
        (size,) = struct.unpack_from("<I", raw, at)
        if at + 4 + size > len(raw):
            raise InputError(f"input {name!r}: a BYTES element runs past the data")
        out.append(raw[at + 4 : at + 4 + size])
        at += 4 + size
    if len(out) != count:
        raise InputError(f"input {name!r}: {len(out)} BYTES elements for {count} in its shape")
    return out


def encode_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def numbers(raw: bytes, datatype: str, shape: list[int], count: int, name: str) -> np.ndarray:
    """A numeric tensor from little-endian bytes, checked against its shape."""
    dtype = np.dtype(NUMPY[datatype]).newbyteorder("<")
    if count * dtype.itemsize != len(raw):
        raise InputError(f"input {name!r}: {len(raw)} bytes do not hold {datatype}{shape}")
    return np.frombuffer(raw, dtype).reshape(shape)


def values(data, datatype: str, shape: list[int], count: int, name: str) -> np.ndarray:
    """A numeric tensor from a list of numbers (JSON data, typed contents)."""
    try:
        array = np.asarray(data, NUMPY[datatype])
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(f"input {name!r}: the data are not {datatype} values ({exc})") from exc
    if array.ndim != 1 or array.size != count:
        raise InputError(f"input {name!r}: {array.size} values for shape {shape}")
    return array.reshape(shape)


def model_metadata(model: LoadedModel, versions: list[str]) -> dict:
    """The model's metadata as the protocol's JSON form (gRPC converts it)."""
    m = model.manifest
    if m.modality == "text":
        inputs = [_meta("text", "BYTES", [-1])]
    else:
        h, w = m.preprocess.size
        inputs = [_meta("image", "BYTES", [-1]), _meta("pixels", "UINT8", [-1, h, w, 3])]
    outputs = [_meta(EMBEDDING, "FP32", [-1, m.dim])]
    parameters = {"modality": m.modality, "normalized": m.normalized, "layer": m.layer}
    for head, spec in m.heads.items():
        classes = json.dumps(list(spec.classes))
        outputs.append(_meta(head, "FP32", [-1, len(spec.classes)],
                             {"classes": classes, "score_kind": spec.score_kind}))  # fmt: skip
        parameters[f"{head}.classes"] = classes
    return {"name": m.name, "versions": versions, "platform": "onnxruntime_onnx",
            "inputs": inputs, "outputs": outputs, "parameters": parameters}  # fmt: skip


def _meta(name: str, datatype: str, shape: list[int], parameters: dict | None = None) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, "parameters": parameters or {}}


def engine_items(model: LoadedModel, inputs: list[Tensor]) -> list:
    """The engine's items from the request's one input tensor."""
    names = {"text": "BYTES"} if model.manifest.modality == "text" else {
        "image": "BYTES", "pixels": "UINT8"}  # fmt: skip
    if len(inputs) != 1 or inputs[0].name not in names:
        got = ", ".join(t.name for t in inputs) or "none"
        raise InputError(f"model {model.manifest.name!r} takes one input of {sorted(names)}; "
                         f"got {got}")  # fmt: skip
    tensor = inputs[0]
    if tensor.datatype != names[tensor.name]:
        raise InputError(f"input {tensor.name!r} must be {names[tensor.name]}, not "
                         f"{tensor.datatype}")  # fmt: skip
    if tensor.name == "pixels":
        if len(tensor.shape) != 4:
            raise InputError(f"input 'pixels' must be [N, H, W, 3], not {tensor.shape}")
        return list(np.asarray(tensor.data))
    if len(tensor.data) != (int(np.prod(tensor.shape)) if tensor.shape else 1):
        raise InputError(f"input {tensor.name!r}: {len(tensor.data)} elements for shape "
                         f"{tensor.shape}")  # fmt: skip
    if tensor.name == "image":
        for i, b in enumerate(tensor.data):
            if not isinstance(b, bytes | bytearray):
                raise InputError("an image is the file's bytes: send them as binary data (the "
                                 "binary tensor extension, or gRPC)", i, "image")  # fmt: skip
        return [bytes(b) for b in tensor.data]
    texts = []
    for i, b in enumerate(tensor.data):
        try:
            texts.append(b.decode("utf-8") if isinstance(b, bytes | bytearray) else str(b))
        except UnicodeDecodeError as exc:
            raise InputError(f"not UTF-8: {exc}", i, "text") from exc
    return texts


async def infer(engine: Engine, model: LoadedModel, inputs: list[Tensor],
                requested: list[str], deadline: float | None = None) -> list[Tensor]:  # fmt: skip
    """The requested outputs (all when none are named) of the model on `inputs`."""
    available = [EMBEDDING, *model.manifest.heads]
    unknown = [n for n in requested if n not in available]
    if unknown:
        raise InputError(f"no output {unknown[0]!r}; this model has {', '.join(available)}")
    result = await engine.infer(model, engine_items(model, inputs), deadline)
    arrays = {EMBEDDING: result.features, **result.scores}
    return [Tensor(n, "FP32", list(arrays[n].shape), arrays[n]) for n in requested or available]
