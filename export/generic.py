"""Backbones the user brings: a torch module, a local Hugging Face encoder, an ONNX file,
or a torchvision / timm model by name (these two download weights, so they need internet)."""

from __future__ import annotations

from pathlib import Path

from embedder.core.manifest import ImagePreprocess, TextPreprocess

from .config import IMAGENET, PretrainedCfg
from .weights import require


def user_cfg(name: str, modality: str, preprocess, description: str = "") -> PretrainedCfg:
    return PretrainedCfg(name, modality, preprocess, weights=None, description=description)


def module_backbone_cfg(module, name: str, preprocess: ImagePreprocess = IMAGENET):
    """Your own nn.Module mapping normalised NCHW float images to features or feature maps."""
    from .torch_image import module_backbone

    return module_backbone(module, preprocess), user_cfg(name, "image", preprocess, "nn.Module")


def hf_encoder_cfg(model_dir: str | Path, name: str, max_length: int = 256, normalize=True):
    """A local Hugging Face BERT-family encoder directory with a tokenizer.json."""
    from .torch_text import TorchTextBackbone

    preprocess = TextPreprocess(max_length=max_length)
    backbone = TorchTextBackbone(Path(model_dir), preprocess, normalize=normalize)
    return backbone, user_cfg(name, "text", preprocess, f"Hugging Face encoder {model_dir}")


def onnx_file_cfg(
    path: str | Path,
    name: str,
    input_name: str,
    cut_tensor: str | None = None,
    preprocess: ImagePreprocess = IMAGENET,
    token_pooling: str = "cls",
):
    """An ONNX image model taking normalised NCHW floats, cut at the tensor `cut_tensor`.

    Without a cut tensor, `backbone.layers()` lists the candidates and export refuses to guess.
    """
    from .onnx_cut import OnnxCutBackbone

    backbone = OnnxCutBackbone(
        Path(path), input_name, preprocess, default_layer=cut_tensor, token_pooling=token_pooling
    )
    return backbone, user_cfg(name, "image", preprocess, f"ONNX file {path}")


def torchvision_cfg(arch: str):
    """torchvision.models by name with its default weights (downloaded by torchvision)."""
    from torch import nn

    from .torch_image import TorchImageBackbone

    models = require("torchvision.models", "pip install torchvision (needs internet for weights)")
    model = models.get_model(arch, weights="DEFAULT").eval()
    for head in ("fc", "classifier", "heads", "head"):
        if hasattr(model, head):
            setattr(model, head, nn.Identity())
            break
    backbone = TorchImageBackbone([("pooled", model)], IMAGENET)
    return backbone, user_cfg(f"torchvision_{arch}", "image", IMAGENET, "torchvision")


def timm_cfg(arch: str):
    """timm by name: num_classes=0 gives the pooled penultimate features."""
    from .torch_image import TorchImageBackbone

    timm = require("timm", "pip install timm (needs internet for weights)")
    model = timm.create_model(arch, pretrained=True, num_classes=0).eval()
    data = timm.data.resolve_data_config({}, model=model)
    _, h, w = data["input_size"]
    preprocess = ImagePreprocess(
        size=(h, w),
        resize_shorter=round(h / data.get("crop_pct", 0.875)),
        interpolation="bicubic" if data.get("interpolation") == "bicubic" else "bilinear",
        mean=tuple(data["mean"]),
        std=tuple(data["std"]),
    )
    backbone = TorchImageBackbone([("pooled", model)], preprocess)
    return backbone, user_cfg(f"timm_{arch}", "image", preprocess, "timm")


HUB_PREFIXES = {"torchvision": torchvision_cfg, "timm": timm_cfg}
