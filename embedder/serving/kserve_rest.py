"""KServe v2 over HTTP (/v2): health, metadata and inference, with the binary tensor extension.

Inputs are JSON `data`, or binary: the JSON header's length in `Inference-Header-Content-Length`
and each input's bytes after it (`binary_data_size`). Outputs are binary when asked for
(`binary_data` on an output, or `binary_data_output` on the request), JSON `data` otherwise.
Errors: {"error": "<message>"} with the status the engine's error maps to.
"""

from __future__ import annotations

import json

import numpy as np
from aiohttp import web

from embedder.core.errors import InputError
from embedder.engine.engine import Engine
from embedder.serving import kserve
from embedder.serving.http import HttpError

HEADER_LENGTH = "Inference-Header-Content-Length"


def error_body(status: int, message: str, exc: Exception) -> dict:
    return {"error": message}


def _tensors(header: dict, binary: bytes) -> list[kserve.Tensor]:
    tensors, at = [], 0
    for t in header.get("inputs") or []:
        if not isinstance(t, dict) or not {"name", "datatype", "shape"} <= set(t):
            raise InputError("each input needs name, datatype and shape")
        name, datatype, shape = t["name"], t["datatype"], [int(d) for d in t["shape"]]
        size = (t.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            raw, at = binary[at : at + size], at + size
            if len(raw) != size:
                raise InputError(f"input {name!r}: binary_data_size {size} runs past the body")
            data = (kserve.decode_bytes(raw, name) if datatype == "BYTES"
                    else kserve.numbers(raw, datatype, shape, name))  # fmt: skip
        elif datatype == "BYTES":
            data = [v.encode() if isinstance(v, str) else v for v in _flat(t.get("data"))]
        else:
            if datatype not in kserve.NUMPY:
                raise InputError(f"input {name!r}: unknown datatype {datatype!r}")
            values = np.asarray(_flat(t.get("data")), kserve.NUMPY[datatype])
            if values.size != int(np.prod(shape)):
                raise InputError(f"input {name!r}: {values.size} values for shape {shape}")
            data = values.reshape(shape)
        tensors.append(kserve.Tensor(name, datatype, shape, data))
    return tensors


def _flat(data) -> list:
    if data is None:
        return []
    if isinstance(data, list) and data and isinstance(data[0], list):
        return [v for row in data for v in _flat(row)]
    return list(data) if isinstance(data, list) else [data]


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
        body = await request.read()
        length = int(request.headers.get(HEADER_LENGTH, len(body)))
        try:
            header = json.loads(body[:length])
        except ValueError as exc:
            raise HttpError(400, f"the inference header is not JSON: {exc}") from exc
        if not isinstance(header, dict):
            raise HttpError(400, "the inference header must be a JSON object")
        requested = header.get("outputs") or []
        outputs = await kserve.infer(self.engine, model, _tensors(header, body[length:]),
                                     [o["name"] for o in requested])  # fmt: skip
        binary = bool((header.get("parameters") or {}).get("binary_data_output")) or any(
            (o.get("parameters") or {}).get("binary_data", False) for o in requested
        )
        return self._answer(model, header.get("id", ""), outputs, binary)

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
