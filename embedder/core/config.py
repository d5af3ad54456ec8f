"""How a model's onnxruntime session is opened: one frozen dataclass, and the range check
every component's config uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from embedder.core.errors import ConfigError

Provider = Literal["auto", "cpu", "cuda", "tensorrt"]


def check_ranges(config, at_least_one=(), not_negative=()) -> None:
    """Refuse a setting out of range (NaN included) with its name, before anything starts."""
    for name in at_least_one:
        if not getattr(config, name) >= 1:
            raise ConfigError(f"{name} must be at least 1, got {getattr(config, name)}", name)
    for name in not_negative:
        if not getattr(config, name) >= 0:
            raise ConfigError(f"{name} must be 0 or more, got {getattr(config, name)}", name)


@dataclass(frozen=True)
class SessionConfig:
    provider: Provider = "auto"
    cpu_precision: Literal["fp32", "int8"] = "fp32"  # int8 only where the variant exists
    intra_op_threads: int = 0  # onnxruntime threads; 0: every core (a server shares them out)
    # A text model's batch runs in parts of at most this many padded tokens, texts of similar
    # length together. 0: automatic, 2048 on a CPU (bounded memory, no padding paid for a
    # longer text), none on a GPU.
    max_batch_tokens: int = 0

    def __post_init__(self) -> None:
        check_ranges(self, not_negative=("intra_op_threads", "max_batch_tokens"))
