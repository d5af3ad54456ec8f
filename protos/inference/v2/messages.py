"""The KServe v2 gRPC messages, in a descriptor pool of their own.

tritonclient registers the protocol's `inference` package in protobuf's default pool; building
ours there too would make a process that holds both fail ("duplicate symbol"). So the messages
come from the checked-in descriptor set (`python -m protos.generate`) in a private pool; the
server registers the service from `FILE`'s descriptor (embedder.serving.status.add_service).
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE = "inference.GRPCInferenceService"

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
