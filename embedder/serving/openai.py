"""The OpenAI-compatible embeddings API: `POST /v1/embeddings`, `GET /v1/models[/{id}]`.

What the OpenAI SDK, LangChain, LlamaIndex and vector databases' embedding hooks send: `model`,
`input` (a string or a list of strings; for image models, `data:image/...;base64,` URLs),
`encoding_format` (`float`, or `base64`: little-endian float32 bytes, what the SDK asks for by
default), `dimensions` (the first k, re-normalised as `truncate_dim` does), `user` (ignored).
Errors come in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import base64
import binascii
import json

from aiohttp import web

from embedder.core.errors import InputError, ModelNotFoundError
from embedder.core.inputs import check_item_count
from embedder.engine.engine import EmbedOptions, Engine
from embedder.serving.http import HttpError, json_body

ERROR_TYPES = {401: ("authentication_error", "invalid_api_key"),
               404: ("invalid_request_error", "unknown_url"),
               413: ("invalid_request_error", "request_too_large"),
               429: ("rate_limit_error", "rate_limit_exceeded"),
               503: ("server_error", "unavailable")}  # fmt: skip


def error_body(status: int, message: str, exc: Exception) -> dict:
    kind, code = ERROR_TYPES.get(status, ("invalid_request_error" if status < 500
                                          else "server_error", None))  # fmt: skip
    param = getattr(exc, "param", None)
    if isinstance(exc, ModelNotFoundError):
        code, param = "model_not_found", "model"
    elif isinstance(exc, InputError) and exc.index is not None:
        param = f"input[{exc.index}]"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _inputs(body: dict) -> list[str]:
    value = body.get("input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    if isinstance(value, list):  # token arrays: this server tokenises itself
        raise HttpError(400, "input must be a string or a list of strings (token arrays are "
                             "not taken: send the text)", "input")  # fmt: skip
    raise HttpError(400, "input is required: a string or a list of strings", "input")


def _image(index: int, value: str) -> bytes:
    """A data:image/...;base64, URL as the image's bytes."""
    head, comma, data = value.partition(",")
    if not (head.startswith("data:image/") and head.endswith(";base64") and comma):
        raise InputError("image models take data:image/<type>;base64,<bytes> URLs", index,
                         "image")  # fmt: skip
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error as exc:
        raise InputError(f"the data URL is not base64: {exc}", index, "image") from exc


def _options(body: dict) -> tuple[EmbedOptions, str]:
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise HttpError(400, f"encoding_format must be 'float' or 'base64', got {encoding!r}",
                        "encoding_format")  # fmt: skip
    dimensions = body.get("dimensions")
    if dimensions is not None and (type(dimensions) is not int or dimensions < 1):
        raise HttpError(400, "dimensions must be a positive integer", "dimensions")
    return EmbedOptions(truncate_dim=dimensions or 0), encoding


class OpenAIRoutes:
    def __init__(self, engine: Engine):
        self.engine = engine

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/embeddings", self.embeddings), web.get("/v1/models", self.models),
                web.get("/v1/models/{name}", self.model)]  # fmt: skip

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise HttpError(400, "model is required: the name of a served model", "model")
        model = self.engine.model(name)
        options, encoding = _options(body)
        texts = _inputs(body)
        check_item_count(len(texts), self.engine.config.max_items_per_request)
        if model.manifest.modality == "image":
            items: list = [_image(i, v) for i, v in enumerate(texts)]
        else:
            items = texts
        result = await self.engine.embed(model, items, options)
        vectors = result.vectors
        if encoding == "base64":
            rows = [base64.b64encode(v.tobytes()).decode("ascii") for v in vectors]
        else:
            rows = vectors.tolist()
        data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]
        usage = {"prompt_tokens": result.tokens, "total_tokens": result.tokens}
        answer = {"object": "list", "data": data, "model": name, "usage": usage}
        return web.Response(text=json.dumps(answer), content_type="application/json")

    async def models(self, request: web.Request) -> web.Response:
        names = sorted({m.manifest.name for m in self.engine.models.values()})
        return web.json_response({"object": "list", "data": [_model_object(n) for n in names]})

    async def model(self, request: web.Request) -> web.Response:
        model = self.engine.model(request.match_info["name"])  # 404 model_not_found if absent
        return web.json_response(_model_object(model.manifest.name))


def _model_object(name: str) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "embedder"}
