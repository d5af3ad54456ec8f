"""KServe v2 over gRPC: `inference.GRPCInferenceService` on the same port as embedder.v1.

Inputs come as typed contents or as `raw_input_contents`; outputs go back as
`raw_output_contents` (what Triton's clients read fastest), in the order of the outputs.
"""

from __future__ import annotations

import time

import numpy as np

from embedder.core.errors import InputError, MessageTooLargeError, echo
from embedder.engine.engine import Engine
from embedder.serving import kserve
from embedder.serving.status import unary_rpc
from protos.inference.v2 import messages as v2

# Typed contents field of each datatype an input may have (kserve.input_types).
CONTENTS = {"UINT8": "uint_contents", "BYTES": "bytes_contents"}


def parameter(value) -> v2.InferParameter:
    if isinstance(value, bool):
        return v2.InferParameter(bool_param=value)
    if isinstance(value, int):
        return v2.InferParameter(int64_param=value)
    if isinstance(value, float):
        return v2.InferParameter(double_param=value)
    return v2.InferParameter(string_param=str(value))


def input_tensor(request, model, max_items: int) -> kserve.Tensor:
    """The request's one input; its spec is checked before its data are read."""
    if len(request.inputs) != 1:
        got = ", ".join(echo(t.name) for t in request.inputs[:4]) or "none"
        raise InputError(f"model {model.manifest.name!r} takes one input of "
                         f"{sorted(kserve.input_types(model))}; got {got}")  # fmt: skip
    t, raw = request.inputs[0], request.raw_input_contents
    name, datatype, shape, count = kserve.checked_spec(model, t.name, t.datatype, list(t.shape),
                                                       max_items)  # fmt: skip
    typed = t.HasField("contents") and t.contents.ByteSize() > 0
    if raw:
        if len(raw) != 1:
            raise InputError(f"{len(raw)} raw_input_contents for one input")
        if typed:
            raise InputError(f"input {name!r} comes both as raw_input_contents and as typed "
                             "contents: send one of them")  # fmt: skip
        if datatype == "BYTES":
            return kserve.Tensor(name, datatype, shape, kserve.decode_bytes(raw[0], name, count))
        return kserve.Tensor(name, datatype, shape,
                             kserve.numbers(raw[0], datatype, shape, count, name))  # fmt: skip
    contents = list(getattr(t.contents, CONTENTS[datatype]))
    if datatype == "BYTES":
        if len(contents) != count:
            raise InputError(f"input {name!r}: {len(contents)} elements for shape {shape}")
        return kserve.Tensor(name, datatype, shape, contents)
    return kserve.Tensor(name, datatype, shape,
                         kserve.values(contents, datatype, shape, count, name))  # fmt: skip


ANSWER_OVERHEAD = 1024  # bytes of a ModelInferResponse besides its tensors


class KServeServicer:
    """The service's methods; the server registers them with `status.add_service`."""

    protocol = "kserve-v2"

    def __init__(self, engine: Engine, max_message_bytes: int):
        self.engine, self.metrics = engine, engine.metrics
        self.max_message_bytes = max_message_bytes

    @unary_rpc
    async def ServerLive(self, request, context) -> v2.ServerLiveResponse:
        return v2.ServerLiveResponse(live=True)

    @unary_rpc
    async def ServerReady(self, request, context) -> v2.ServerReadyResponse:
        return v2.ServerReadyResponse(ready=self.engine.ready())

    @unary_rpc
    async def ModelReady(self, request: v2.ModelReadyRequest, context) -> v2.ModelReadyResponse:
        self.engine.model(request.name, request.version)  # NOT_FOUND when it is not served
        return v2.ModelReadyResponse(ready=self.engine.ready())

    @unary_rpc
    async def ServerMetadata(self, request, context) -> v2.ServerMetadataResponse:
        return v2.ServerMetadataResponse(name=kserve.SERVER_NAME, version=kserve.SERVER_VERSION,
                                         extensions=[])  # fmt: skip

    @unary_rpc
    async def ModelMetadata(self, request: v2.ModelMetadataRequest, context
                            ) -> v2.ModelMetadataResponse:  # fmt: skip
        model = self.engine.model(request.name, request.version)
        meta = kserve.model_metadata(model, self.engine.versions(model.manifest.name))

        def tensor(t: dict) -> v2.ModelMetadataResponse.TensorMetadata:
            params = {k: parameter(v) for k, v in t["parameters"].items()}
            return v2.ModelMetadataResponse.TensorMetadata(
                name=t["name"], datatype=t["datatype"], shape=t["shape"], parameters=params
            )

        return v2.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[tensor(t) for t in meta["inputs"]],
            outputs=[tensor(t) for t in meta["outputs"]],
            parameters={k: parameter(v) for k, v in meta["parameters"].items()},
        )  # fmt: skip

    @unary_rpc
    async def ModelInfer(self, request: v2.ModelInferRequest, context) -> v2.ModelInferResponse:
        model = self.engine.model(request.model_name, request.model_version)
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        names = [o.name for o in request.outputs]
        kserve.check_outputs(model, names)
        tensor = input_tensor(request, model, self.engine.config.max_items_per_request)
        self._check_answer_size(model, tensor)
        outputs = await kserve.infer(self.engine, model, tensor, names, deadline)
        m = model.manifest
        return v2.ModelInferResponse(
            model_name=m.name, model_version=m.version, id=request.id,
            outputs=[v2.ModelInferResponse.InferOutputTensor(
                name=t.name, datatype=t.datatype, shape=t.shape) for t in outputs],
            raw_output_contents=[np.ascontiguousarray(t.data, "<f4").tobytes() for t in outputs],
        )  # fmt: skip

    def _check_answer_size(self, model, tensor: kserve.Tensor) -> None:
        """Refuse before any work a request whose answer would be over the message limit."""
        n = tensor.shape[0] if tensor.name == "pixels" else len(tensor.data)
        heads = model.manifest.heads.values()
        floats = model.manifest.dim + sum(len(h.classes) + bool(h.ood_output) for h in heads)
        size = n * floats * 4 + ANSWER_OVERHEAD
        if size > self.max_message_bytes:
            raise MessageTooLargeError(
                f"the answer to {n} items would be {size} bytes, over the server's message "
                f"limit of {self.max_message_bytes}; send fewer items per request"
            )
