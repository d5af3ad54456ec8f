"""Export pretrained backbones, heads cut off, to an ONNX model repository.

The only package of the project that imports torch (lazily, inside the recipes).
"""

from . import recipes  # noqa: F401  (the built-in recipes register themselves, as timm's do)
from .pipeline import ExportConfig, ExportResult, export_backbone
from .registry import create_backbone, get_pretrained_cfg, list_backbones, register_backbone

__all__ = [
    "ExportConfig",
    "ExportResult",
    "create_backbone",
    "export_backbone",
    "get_pretrained_cfg",
    "list_backbones",
    "register_backbone",
]
