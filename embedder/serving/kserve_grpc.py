"""KServe v2 over gRPC: `inference.GRPCInferenceService` on the same port as embedder.v1.

Inputs come as typed contents or as `raw_input_contents`; outputs go back as
`raw_output_contents` (what Triton's clients read fastest), in the order of the outputs.
"""

from __future__ import annotations

import time

import numpy as np

from embedder.core.errors import InputError, MessageTooLargeError
from embedder.engine.engine import Engine
from embedder.serving import kserve
from embedder.serving.status import unary_rpc
from protos.inference.v2 import messages as v2

# Typed contents field of each datatype (the protocol's InferTensorContents).
CONTENTS = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
    "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}  # fmt: skip


def parameter(value) -> v2.InferParameter:
    if isinstance(value, bool):
        return v2.InferParameter(bool_param=value)
    if isinstance(value, int):
        return v2.InferParameter(int64_param=value)
    if isinstance(value, float):
        return v2.InferParameter(double_param=value)
    return v2.InferParameter(string_param=str(value))


def input_tensors(request) -> list[kserve.Tensor]:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InputError(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    tensors = []
    for i, t in enumerate(request.inputs):
        name, datatype, shape, count = kserve.checked_spec(t.name, t.datatype, list(t.shape))
        if datatype not in CONTENTS:
            raise InputError(f"input {name!r}: {datatype} is not taken over gRPC")
        if raw and datatype == "BYTES":
            data = kserve.decode_bytes(raw[i], name, count)
        elif raw:
            data = kserve.numbers(raw[i], datatype, shape, count, name)
        elif datatype == "BYTES":
            data = list(t.contents.bytes_contents)
            if len(data) != count:
                raise InputError(f"input {name!r}: {len(data)} elements for shape {shape}")
        else:
            contents = list(getattr(t.contents, CONTENTS[datatype]))
            data = kserve.values(contents, datatype, shape, count, name)
        tensors.append(kserve.Tensor(name, datatype, shape, data))
    return tensors


ANSWER_OVERHEAD = 1024  # bytes of a ModelInferResponse besides its tensors


class KServeServicer:
    """The service's methods; `protos.inference.v2.messages.add_servicer` registers them."""

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
        inputs = input_tensors(request)
        self._check_answer_size(model, inputs)
        outputs = await kserve.infer(self.engine, model, inputs,
                                     [o.name for o in request.outputs], deadline)  # fmt: skip
        m = model.manifest
        return v2.ModelInferResponse(
            model_name=m.name, model_version=m.version, id=request.id,
            outputs=[v2.ModelInferResponse.InferOutputTensor(
                name=t.name, datatype=t.datatype, shape=t.shape) for t in outputs],
            raw_output_contents=[np.ascontiguousarray(t.data, "<f4").tobytes() for t in outputs],
        )  # fmt: skip

    def _check_answer_size(self, model, inputs: list[kserve.Tensor]) -> None:
        """Refuse before any work a request whose answer would be over the message limit."""
        n = inputs[0].shape[0] if inputs and inputs[0].shape else 0
        floats = model.manifest.dim + sum(len(h.classes) for h in model.manifest.heads.values())
        size = n * floats * 4 + ANSWER_OVERHEAD
        if size > self.max_message_bytes:
            raise MessageTooLargeError(
                f"the answer to {n} items would be {size} bytes, over the server's message "
                f"limit of {self.max_message_bytes}; send fewer items per request"
            )
