"""KServe v2 over HTTP (/v2): health, metadata and inference, with the binary tensor extension.

Inputs are JSON `data`, or binary: the JSON header's length in `Inference-Header-Content-Length`
and each input's bytes after it (`binary_data_size`). Outputs are binary when asked for
(`binary_data` on an output, or `binary_data_output` on the request), JSON `data` otherwise.
Errors: {"error": "<message>"} with the status the engine's error maps to.
"""

from __future__ import annotations

import json
import re

import numpy as np
from aiohttp import web

from embedder.core.errors import InputError, echo
from embedder.engine.engine import Engine
from embedder.serving import kserve
from embedder.serving.http import HttpError, json_object, read_body

HEADER_LENGTH = "Inference-Header-Content-Length"
HEADER_SIZE = re.compile(r"[0-9]{1,12}")  # ASCII digits only: int() also takes "²" and "1_0"


def error_body(status: int, message: str, exc: Exception) -> dict:
    return {"error": message}


def _dict(value, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(f"{what} must be a JSON object")
    return value


def _tensor(model, header: dict, binary: bytes, max_items: int) -> kserve.Tensor:
    """The request's one input; its spec is checked before its data are read."""
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(t, dict) for t in inputs):
        raise InputError("inputs must be a list of objects with name, datatype and shape")
    if len(inputs) != 1:
        got = ", ".join(echo(t.get("name")) for t in inputs[:4]) or "none"
        raise InputError(f"model {model.manifest.name!r} takes one input of "
                         f"{sorted(kserve.input_types(model))}; got {got}")  # fmt: skip
    t = inputs[0]
    name, datatype, shape, count = kserve.checked_spec(model, t.get("name"), t.get("datatype"),
                                                       t.get("shape"), max_items)  # fmt: skip
    size = _dict(t.get("parameters"), f"input {name!r}'s parameters").get("binary_data_size")
    if size is None:
        if binary:
            raise InputError(f"{len(binary)} bytes follow the JSON header, but no input has a "
                             "binary_data_size")  # fmt: skip
        if datatype == "BYTES":
            data = [_bytes(v, name) for v in _flat(t.get("data"))]
            if len(data) != count:
                raise InputError(f"input {name!r}: {len(data)} elements for shape {shape}")
        else:
            data = kserve.values(_flat(t.get("data")), datatype, shape, count, name)
        return kserve.Tensor(name, datatype, shape, data)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InputError(f"input {name!r}: binary_data_size must be a size in bytes")
    if "data" in t:
        raise InputError(f"input {name!r} has both data and binary_data_size: send one of them")
    if size != len(binary):
        raise InputError(f"input {name!r}: binary_data_size is {size}, but {len(binary)} bytes "
                         "follow the JSON header")  # fmt: skip
    data = (kserve.decode_bytes(binary, name, count) if datatype == "BYTES"
            else kserve.numbers(binary, datatype, shape, count, name))  # fmt: skip
    return kserve.Tensor(name, datatype, shape, data)


def _bytes(value, name: str) -> bytes:
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InputError(f"input {name!r}: a string that is not Unicode ({exc})") from exc
    raise InputError(f"input {name!r}: BYTES data in JSON are strings")


def _flat(data) -> list:
    """A JSON data field, nested or flat, as a flat list."""
    if data is None:
        return []
    if not isinstance(data, list):
        return [data]
    out = []
    for value in data:
        out.extend(_flat(value) if isinstance(value, list) else [value])
    return out


def _flag(parameters: dict, key: str, where: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise InputError(f"{where}{key} must be true or false, not {echo(value)}")
    return value


def _requested(header: dict) -> tuple[list[str], bool]:
    """The names of the outputs asked for, and whether any asked for binary data."""
    outputs = header.get("outputs") or []
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        raise InputError("outputs must be a list of objects with a name")
    binary = _flag(_dict(header.get("parameters"), "parameters"), "binary_data_output", "")
    for o in outputs:
        where = f"output {o['name']!r}'s "
        binary |= _flag(_dict(o.get("parameters"), where + "parameters"), "binary_data", where)
    return [o["name"] for o in outputs], binary


class KServeRoutes:
    def __init__(self, engine: Engine):
        self.engine = engine

    def routes(self) -> list[web.RouteDef]:
        model = "/v2/models/{name}"
        versioned = "/v2/models/{name}/versions/{version}"
        return [
            web.get("/v2/health/live", self.live), web.get("/v2/health/ready", self.ready),
            web.get("/v2", self.server_metadata),
            web.get(model, self.model_metadata), web.get(versioned, self.model_metadata),
            web.get(model + "/ready", self.model_ready),
            web.get(versioned + "/ready", self.model_ready),
            web.post(model + "/infer", self.infer), web.post(versioned + "/infer", self.infer),
        ]  # fmt: skip

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        ready = self.engine.ready()  # 503 while loading and from the start of a drain
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response({"name": kserve.SERVER_NAME, "version": kserve.SERVER_VERSION,
                                  "extensions": ["binary_tensor_data"]})  # fmt: skip

    def _model(self, request: web.Request):
        return self.engine.model(request.match_info["name"], request.match_info.get("version", ""))

    async def model_metadata(self, request: web.Request) -> web.Response:
        model = self._model(request)
        versions = self.engine.versions(model.manifest.name)
        return web.json_response(kserve.model_metadata(model, versions))

    async def model_ready(self, request: web.Request) -> web.Response:
        self._model(request)
        ready = self.engine.ready()
        return web.json_response({"name": request.match_info["name"], "ready": ready},
                                 status=200 if ready else 503)  # fmt: skip

    async def infer(self, request: web.Request) -> web.Response:
        model = self._model(request)
        body = await read_body(request)
        length = request.headers.get(HEADER_LENGTH, str(len(body)))
        if not HEADER_SIZE.fullmatch(length) or int(length) > len(body):
            raise HttpError(400, f"{HEADER_LENGTH} must be the JSON header's size in bytes, at "
                                 f"most the body's {len(body)}")  # fmt: skip
        length = int(length)
        header = json_object(body[:length], request.charset, "the inference header")
        names, binary = _requested(header)
        kserve.check_outputs(model, names)
        limit = self.engine.config.max_items_per_request
        tensor = _tensor(model, header, body[length:], limit)
        outputs = await kserve.infer(self.engine, model, tensor, names)
        return self._answer(model, str(header.get("id", "")), outputs, binary)

    def _answer(self, model, request_id: str, outputs: list[kserve.Tensor],
                binary: bool) -> web.Response:  # fmt: skip
        m, described, blobs = model.manifest, [], []
        for t in outputs:
            entry = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
            if binary:
                blob = np.ascontiguousarray(t.data, "<f4").tobytes()
                entry["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                entry["data"] = np.asarray(t.data).reshape(-1).tolist()
            described.append(entry)
        header = json.dumps({"model_name": m.name, "model_version": m.version, "id": request_id,
                             "outputs": described}).encode()  # fmt: skip
        if not binary:
            return web.Response(body=header, content_type="application/json")
        return web.Response(body=header + b"".join(blobs), content_type="application/octet-stream",
                            headers={HEADER_LENGTH: str(len(header))})  # fmt: skip
