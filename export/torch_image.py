"""Image backbones from torch modules, cut after a named stage and globally average-pooled.

The exported graph takes resized RGB uint8 pixels (N, H, W, 3) and does the rest itself -
layout change, mean/std normalisation, the backbone up to the cut, pooling - so the server
never carries model-specific math.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from embedder.core.manifest import ImagePreprocess

from .errors import UnknownLayerError

OPSET = 18


def torch_to_onnx(module: nn.Module, args: tuple, path: Path, names: list[str], dynamic) -> None:
    """The torch.export-based exporter, one self-contained file, output named `features`.
    Its notes about torch's internals (torchvision missing, axis names merged, deprecated tree
    specs) are not the user's business and are kept off the console; errors still raise."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec")
            warnings.filterwarnings("ignore", category=UserWarning, message="# The axis name")
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=names,
                output_names=["features"],  # not "embedding": collides with an internal name
                dynamic_shapes=dynamic,
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        registration.setLevel(level)


class PixelsToFeatures(nn.Module):
    """uint8 NHWC pixels -> normalised NCHW -> stages -> (N, D) pooled features."""

    def __init__(self, stages: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.stages = stages
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255.0)

    def forward(self, pixels: Tensor) -> Tensor:
        x = pixels.permute(0, 3, 1, 2).float()
        x = self.stages((x - self.mean) / self.std)
        return x.mean((2, 3)) if x.dim() == 4 else x.flatten(1)


class TorchImageBackbone:
    """An ordered list of named stages; cutting after stage k keeps stages[:k+1]."""

    modality = "image"
    normalized = False

    def __init__(
        self,
        stages: Sequence[tuple[str, nn.Module]],
        preprocess: ImagePreprocess,
        classifier: nn.Module | None = None,
        default_layer: str | None = None,
    ):
        self.stages = list(stages)
        self.preprocess = preprocess
        self.classifier = classifier
        self.default_layer = default_layer or self.stages[-1][0]
        self.extra_files: dict[str, Path] = {}
        for _, module in self.stages:
            module.eval()

    def layers(self) -> list[str]:
        return [name for name, _ in self.stages]

    def pooling(self, layer: str) -> str:
        return "global-average"

    def graph(self, layer: str) -> PixelsToFeatures:
        names = self.layers()
        if layer not in names:
            raise UnknownLayerError(layer, names)
        kept = nn.Sequential(*(module for _, module in self.stages[: names.index(layer) + 1]))
        return PixelsToFeatures(kept, self.preprocess.mean, self.preprocess.std).eval()

    def dummy_inputs(self, batch: int = 2) -> dict[str, np.ndarray]:
        h, w = self.preprocess.size
        rng = np.random.default_rng(0)
        return {"pixels": rng.integers(0, 256, (batch, h, w, 3), dtype=np.uint8)}

    def export_onnx(self, path: Path, layer: str) -> None:
        dummy = torch.from_numpy(self.dummy_inputs()["pixels"])
        batch = torch.export.Dim("batch", min=1)
        torch_to_onnx(self.graph(layer), (dummy,), path, ["pixels"], ({0: batch},))

    @torch.no_grad()
    def reference(self, inputs: dict[str, np.ndarray], layer: str) -> np.ndarray:
        return self.graph(layer)(torch.from_numpy(inputs["pixels"])).numpy()

    @torch.no_grad()
    def logits(self, pixels: np.ndarray) -> np.ndarray | None:
        """The original classification head on the full backbone, for the sanity check."""
        if self.classifier is None:
            return None
        features = self.graph(self.layers()[-1])(torch.from_numpy(pixels))
        return self.classifier.eval()(features).numpy()


def module_backbone(module: nn.Module, preprocess: ImagePreprocess) -> TorchImageBackbone:
    """Any nn.Module: an nn.Sequential can be cut after each child, otherwise only at 'output'."""
    if isinstance(module, nn.Sequential):
        return TorchImageBackbone(list(module.named_children()), preprocess)
    return TorchImageBackbone([("output", module)], preprocess)
