from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("data", "shape", "dtype")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    def __init__(self, data: _Optional[bytes] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("id", "image", "text", "tensor")
    ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    id: str
    image: bytes
    text: str
    tensor: Tensor
    def __init__(self, id: _Optional[str] = ..., image: _Optional[bytes] = ..., text: _Optional[str] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class EmbedOptions(_message.Message):
    __slots__ = ("normalize", "truncate_dim")
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_DIM_FIELD_NUMBER: _ClassVar[int]
    normalize: bool
    truncate_dim: int
    def __init__(self, normalize: _Optional[bool] = ..., truncate_dim: _Optional[int] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("model", "version", "items", "options", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    items: _containers.RepeatedCompositeFieldContainer[Item]
    options: EmbedOptions
    request_id: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., options: _Optional[_Union[EmbedOptions, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("queue_ms", "preprocess_ms", "inference_ms", "total_ms", "batch_items")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_ITEMS_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    preprocess_ms: float
    inference_ms: float
    total_ms: float
    batch_items: int
    def __init__(self, queue_ms: _Optional[float] = ..., preprocess_ms: _Optional[float] = ..., inference_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., batch_items: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("model", "version", "embeddings", "shape", "ids", "cache_hits", "timing", "request_id", "error")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    embeddings: bytes
    shape: _containers.RepeatedScalarFieldContainer[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    cache_hits: _containers.RepeatedScalarFieldContainer[bool]
    timing: Timing
    request_id: str
    error: Error
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., embeddings: _Optional[bytes] = ..., shape: _Optional[_Iterable[int]] = ..., ids: _Optional[_Iterable[str]] = ..., cache_hits: _Optional[_Iterable[bool]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., request_id: _Optional[str] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class BatchingLimits(_message.Message):
    __slots__ = ("max_batch_size", "max_queue_delay_ms", "max_queue_size", "max_items_per_request", "max_message_bytes", "max_image_pixels", "inference_streams")
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_ITEMS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_PIXELS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_STREAMS_FIELD_NUMBER: _ClassVar[int]
    max_batch_size: int
    max_queue_delay_ms: float
    max_queue_size: int
    max_items_per_request: int
    max_message_bytes: int
    max_image_pixels: int
    inference_streams: int
    def __init__(self, max_batch_size: _Optional[int] = ..., max_queue_delay_ms: _Optional[float] = ..., max_queue_size: _Optional[int] = ..., max_items_per_request: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., max_image_pixels: _Optional[int] = ..., inference_streams: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "modality", "dim", "layer", "pooling", "normalized", "providers", "precision", "batching", "preprocess_json", "manifest_json", "heads")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    BATCHING_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_JSON_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    modality: str
    dim: int
    layer: str
    pooling: str
    normalized: bool
    providers: _containers.RepeatedScalarFieldContainer[str]
    precision: str
    batching: BatchingLimits
    preprocess_json: str
    manifest_json: str
    heads: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., modality: _Optional[str] = ..., dim: _Optional[int] = ..., layer: _Optional[str] = ..., pooling: _Optional[str] = ..., normalized: _Optional[bool] = ..., providers: _Optional[_Iterable[str]] = ..., precision: _Optional[str] = ..., batching: _Optional[_Union[BatchingLimits, _Mapping]] = ..., preprocess_json: _Optional[str] = ..., manifest_json: _Optional[str] = ..., heads: _Optional[_Iterable[str]] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("model", "version", "items", "heads", "top_k", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    items: _containers.RepeatedCompositeFieldContainer[Item]
    heads: _containers.RepeatedScalarFieldContainer[str]
    top_k: int
    request_id: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., heads: _Optional[_Iterable[str]] = ..., top_k: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class TopK(_message.Message):
    __slots__ = ("labels", "scores", "ood_score", "unknown")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    OOD_SCORE_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedScalarFieldContainer[str]
    scores: _containers.RepeatedScalarFieldContainer[float]
    ood_score: float
    unknown: bool
    def __init__(self, labels: _Optional[_Iterable[str]] = ..., scores: _Optional[_Iterable[float]] = ..., ood_score: _Optional[float] = ..., unknown: _Optional[bool] = ...) -> None: ...

class HeadResult(_message.Message):
    __slots__ = ("head", "score_kind", "items", "ood_scored", "ood_threshold")
    HEAD_FIELD_NUMBER: _ClassVar[int]
    SCORE_KIND_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    OOD_SCORED_FIELD_NUMBER: _ClassVar[int]
    OOD_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    head: str
    score_kind: str
    items: _containers.RepeatedCompositeFieldContainer[TopK]
    ood_scored: bool
    ood_threshold: float
    def __init__(self, head: _Optional[str] = ..., score_kind: _Optional[str] = ..., items: _Optional[_Iterable[_Union[TopK, _Mapping]]] = ..., ood_scored: _Optional[bool] = ..., ood_threshold: _Optional[float] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("model", "version", "heads", "ids", "timing", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    heads: _containers.RepeatedCompositeFieldContainer[HeadResult]
    ids: _containers.RepeatedScalarFieldContainer[str]
    timing: Timing
    request_id: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., heads: _Optional[_Iterable[_Union[HeadResult, _Mapping]]] = ..., ids: _Optional[_Iterable[str]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...
