"""The KServe v2 gRPC messages, in a descriptor pool of their own.

tritonclient registers the protocol's `inference` package in protobuf's default pool; building
ours there too would make a process that holds both fail ("duplicate symbol"). So the messages
come from the checked-in descriptor set (`python -m protos.generate`) in a private pool, and the
service is registered with generic handlers under its protocol name.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE = "inference.GRPCInferenceService"
METHODS = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
           "ModelInfer")  # fmt: skip

_files = descriptor_pb2.FileDescriptorSet.FromString(
    (Path(__file__).parent / "grpc_predict_v2.desc").read_bytes()
)
POOL = descriptor_pool.DescriptorPool()
for _file in _files.file:
    POOL.Add(_file)
FILE = POOL.FindFileByName("protos/inference/v2/grpc_predict_v2.proto")


def _message(name: str):
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"inference.{name}"))


ServerLiveRequest = _message("ServerLiveRequest")
ServerLiveResponse = _message("ServerLiveResponse")
ServerReadyRequest = _message("ServerReadyRequest")
ServerReadyResponse = _message("ServerReadyResponse")
ModelReadyRequest = _message("ModelReadyRequest")
ModelReadyResponse = _message("ModelReadyResponse")
ServerMetadataRequest = _message("ServerMetadataRequest")
ServerMetadataResponse = _message("ServerMetadataResponse")
ModelMetadataRequest = _message("ModelMetadataRequest")
ModelMetadataResponse = _message("ModelMetadataResponse")
ModelInferRequest = _message("ModelInferRequest")
ModelInferResponse = _message("ModelInferResponse")
InferParameter = _message("InferParameter")


def add_servicer(servicer, server: grpc.aio.Server) -> None:
    """Register `servicer`'s methods (named as in METHODS) under the protocol's service name."""
    service = FILE.services_by_name["GRPCInferenceService"]
    handlers = {}
    for name in METHODS:
        method = service.methods_by_name[name]
        request = message_factory.GetMessageClass(method.input_type)
        response = message_factory.GetMessageClass(method.output_type)
        handlers[name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=request.FromString,
            response_serializer=response.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
