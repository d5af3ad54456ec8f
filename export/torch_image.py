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


def torch_to_onnx(module: nn.Module, args: tuple, path: Path, names: list[str], dynamic,
                  outputs: list[str] | None = None) -> None:  # fmt: skip
    """The torch.export-based exporter, one self-contained file, output named `features`
    (or `outputs`, in the order the module returns them).
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
                output_names=outputs or ["features"],  # not "embedding": an internal name
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


class PixelsToLayers(nn.Module):
    """PixelsToFeatures with a pooled output after each stage in `taps` (indices, ascending),
    from one pass: (N, D_1), ..., (N, D_k)."""

    def __init__(self, stages: list[nn.Module], taps: list[int], mean, std):
        super().__init__()
        self.stages = nn.ModuleList(stages[: taps[-1] + 1])
        self.taps = taps
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255.0)

    def forward(self, pixels: Tensor) -> tuple[Tensor, ...]:
        x = (pixels.permute(0, 3, 1, 2).float() - self.mean) / self.std
        pooled = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.taps:
                pooled.append(x.mean((2, 3)) if x.dim() == 4 else x.flatten(1))
        return tuple(pooled)


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

    def layers_graph(self, layers: list[str]) -> PixelsToLayers:
        names = self.layers()
        for layer in layers:
            if layer not in names:
                raise UnknownLayerError(layer, names)
        taps = sorted(names.index(layer) for layer in layers)
        stages = [module for _, module in self.stages]
        return PixelsToLayers(stages, taps, self.preprocess.mean, self.preprocess.std).eval()

    def export_onnx(self, path: Path, layers: list[str], outputs: list[str]) -> None:
        """One pooled output per layer (named as `outputs`, in depth order) from one pass."""
        dummy = torch.from_numpy(self.dummy_inputs()["pixels"])
        batch = torch.export.Dim("batch", min=1)
        graph = self.graph(layers[0]) if len(layers) == 1 else self.layers_graph(layers)
        torch_to_onnx(graph, (dummy,), path, ["pixels"], ({0: batch},), outputs)

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
