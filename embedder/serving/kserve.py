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
from dataclasses import dataclass

import numpy as np

from embedder.core.errors import InputError, echo
from embedder.core.inputs import check_item_count, checked_shape
from embedder.engine.engine import Engine
from embedder.engine.model import LoadedModel

SERVER_NAME, SERVER_VERSION = "embedder", "0.1.0"
EMBEDDING = "embedding"
NUMPY = {"UINT8": np.uint8}  # the numeric datatypes an input may have (`input_types`)


@dataclass
class Tensor:
    name: str
    datatype: str  # BYTES or a key of NUMPY
    shape: list[int]
    data: np.ndarray | list[bytes]  # numbers as an array of `shape`; BYTES as a flat list


def input_types(model: LoadedModel) -> dict[str, str]:
    """The inputs the model takes, by name, with their datatypes."""
    if model.manifest.modality == "text":
        return {"text": "BYTES"}
    if model.manifest.extra_inputs:  # two backbones, two crops: encoded images only
        return {"image": "BYTES"}
    return {"image": "BYTES", "pixels": "UINT8"}


def checked_spec(model: LoadedModel, name, datatype, shape, max_items: int
                 ) -> tuple[str, str, list[int], int]:  # fmt: skip
    """The one input's name, datatype and shape as this model takes them, and its element count,
    checked before a byte of its data is read: the item count first, so that no shape, however
    large or empty, costs more than these few comparisons. Anything else is an InputError."""
    types = input_types(model)
    if not isinstance(name, str) or name not in types:
        raise InputError(f"model {model.manifest.name!r} takes one input of {sorted(types)}; "
                         f"got {echo(name)}")  # fmt: skip
    if datatype != types[name]:
        raise InputError(f"input {name!r} must be {types[name]}, not {echo(datatype)}")
    count = checked_shape(shape, f"input {name!r}")
    if name == "pixels":
        h, w = model.manifest.preprocess.size
        if len(shape) != 4 or list(shape[1:]) != [h, w, 3]:
            raise InputError(f"input 'pixels' must be [N, {h}, {w}, 3] (uint8 RGB, resized as the "
                             f"model's manifest says), not {echo(list(shape))}")  # fmt: skip
    check_item_count(shape[0] if name == "pixels" else count, max_items)
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


def numbers(raw: bytes, datatype: str, shape: list[int], count: int, name: str) -> np.ndarray:
    """A numeric tensor from little-endian bytes, checked against its shape."""
    dtype = np.dtype(NUMPY[datatype]).newbyteorder("<")
    if count * dtype.itemsize != len(raw):
        raise InputError(f"input {name!r}: {len(raw)} bytes do not hold {datatype}{shape}")
    return np.frombuffer(raw, dtype).reshape(shape)


def values(data: list, datatype: str, shape: list[int], count: int, name: str) -> np.ndarray:
    """A numeric tensor from a list of numbers (JSON data, typed contents), each one in range."""
    array = np.asarray(data) if data else np.zeros(0, NUMPY[datatype])
    kind, info = array.dtype.kind, np.iinfo(NUMPY[datatype])
    if (
        kind not in "iu"
        or array.ndim != 1
        or (array.size and (array.min() < info.min or array.max() > info.max))
    ):
        raise InputError(f"input {name!r}: the data are not {count} {datatype} values "
                         f"({info.min}..{info.max})")  # fmt: skip
    if array.size != count:
        raise InputError(f"input {name!r}: {array.size} values for shape {shape}")
    return array.astype(NUMPY[datatype]).reshape(shape)


def model_metadata(model: LoadedModel, versions: list[str]) -> dict:
    """The model's metadata as the protocol's JSON form (gRPC converts it)."""
    m = model.manifest
    if m.modality == "text":
        inputs = [_meta("text", "BYTES", [-1])]
    elif m.extra_inputs:
        inputs = [_meta("image", "BYTES", [-1])]
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
        if spec.ood_output:
            ood = {"ood_threshold": spec.ood_threshold, "ood_kind": spec.ood_kind}
            outputs.append(_meta(ood_name(head), "FP32", [-1], ood))
            parameters[f"{head}.ood_threshold"] = spec.ood_threshold
    return {"name": m.name, "versions": versions, "platform": "onnxruntime_onnx",
            "inputs": inputs, "outputs": outputs, "parameters": parameters}  # fmt: skip


def _meta(name: str, datatype: str, shape: list[int], parameters: dict | None = None) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, "parameters": parameters or {}}


def engine_items(tensor: Tensor) -> list:
    """The engine's items from the request's input, whose spec `checked_spec` passed."""
    if tensor.name == "pixels":
        return list(tensor.data)  # (H, W, 3) views of the checked [N, H, W, 3] array
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


def ood_name(head: str) -> str:
    """The KServe output of a head's OOD score: (N,), higher = more unusual."""
    return f"{head}_ood"


def output_names(model: LoadedModel) -> list[str]:
    """What a request may ask for: the embedding, each head's scores and OOD score."""
    names = [EMBEDDING]
    for head, spec in model.manifest.heads.items():
        names += [head, *([ood_name(head)] if spec.ood_output else [])]
    return names


def check_outputs(model: LoadedModel, requested: list[str]) -> None:
    available = output_names(model)
    unknown = [n for n in requested if n not in available]
    if unknown:
        raise InputError(f"no output {echo(unknown[0])}; this model has {', '.join(available)}")


async def infer(engine: Engine, model: LoadedModel, tensor: Tensor, requested: list[str],
                deadline: float | None = None) -> list[Tensor]:  # fmt: skip
    """The requested outputs (all when none are named, checked by `check_outputs`) of the model
    on its input."""
    result = await engine.infer(model, engine_items(tensor), deadline)
    arrays = {EMBEDDING: result.features, **result.scores}
    arrays |= {ood_name(h): v for h, v in result.ood.items()}
    available = output_names(model)
    return [Tensor(n, "FP32", list(arrays[n].shape), arrays[n]) for n in requested or available]
