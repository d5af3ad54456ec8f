"""Tiny models for fast tests: built in code, no pretrained weights.

torch (the export extra) is imported by the functions that build a model, so that tests of
the serving core, which a serving-only install runs, can import `optimized_op_types`."""

from __future__ import annotations

from collections import Counter
from functools import cache
from typing import TYPE_CHECKING

import onnx

if TYPE_CHECKING:
    from torch import nn


def tiny_cnn(seed: int = 0) -> nn.Sequential:
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU()),
        nn.Sequential(nn.Conv2d(16, 24, 3, padding=1), nn.ReLU()),
    )
    for m in model.modules():  # non-trivial BN statistics so normalisation matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@cache
def _tiny_vit_class() -> type:
    import torch
    from torch import nn

    class TinyViT(nn.Module):
        """Patchify + CLS token + two MLP blocks: an ONNX graph with token outputs to cut."""

        def __init__(self, dim: int = 16, patch: int = 8, num_classes: int = 5):
            super().__init__()
            torch.manual_seed(0)
            self.patchify = nn.Conv2d(3, dim, patch, stride=patch)
            self.cls = nn.Parameter(torch.randn(1, 1, dim))
            self.block0 = nn.Sequential(nn.Linear(dim, dim), nn.GELU())
            self.block1 = nn.Sequential(nn.Linear(dim, dim), nn.GELU())
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = self.patchify(x).flatten(2).transpose(1, 2)
            tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1)
            tokens = tokens + self.block0(tokens)
            tokens = tokens + self.block1(tokens)
            return self.head(self.norm(tokens)[:, 0])

    return TinyViT


def __getattr__(name: str):
    """`TinyViT` is defined on first use, when torch is imported."""
    if name == "TinyViT":
        return _tiny_vit_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def export_tiny_vit(path, size: int = 32) -> None:
    import torch

    model = _tiny_vit_class()().eval()
    torch.onnx.export(
        model,
        (torch.randn(2, 3, size, size),),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


def save_tiny_bert(folder) -> None:
    """A 2-layer, 32-wide BERT with random weights and a WordPiece tokenizer.json."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel

    words = "the a cat dog sat on mat stock market fell rose goal scored cup of coffee".split()
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.save(str(folder / "tokenizer.json"))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).eval().save_pretrained(str(folder))


def export_tiny_repo(repo, bert_dir, image_variants=(), text_variants=(), max_length=16):
    """A tiny image model (32 px) and a tiny text model exported into `repo`."""
    from embedder.core.manifest import ImagePreprocess
    from export import ExportConfig, export_backbone
    from export.generic import hf_encoder_cfg, module_backbone_cfg

    image, image_cfg = module_backbone_cfg(
        tiny_cnn(), "tiny_image", ImagePreprocess(size=(32, 32), resize_shorter=36)
    )
    export_backbone(
        ExportConfig("tiny_image", repo=repo, variants=image_variants), image, image_cfg
    )
    text, text_cfg = hf_encoder_cfg(bert_dir, "tiny_text", max_length=max_length)
    export_backbone(ExportConfig("tiny_text", repo=repo, variants=text_variants), text, text_cfg)
    return repo


def export_layered_models(repo) -> None:
    """Into `repo`: the tiny image model exported at all three of its stages (same weights,
    `tiny_image_layers`), and a second one with other weights and another resize and crop
    (40 px after 44, bicubic: `tiny_wide_layers`), for the advisor and its two-backbone graphs."""
    from embedder.core.manifest import ImagePreprocess
    from export import ExportConfig, export_backbone
    from export.generic import module_backbone_cfg

    for name, seed, pre in (
        ("tiny_image", 0, ImagePreprocess(size=(32, 32), resize_shorter=36)),
        ("tiny_wide", 1, ImagePreprocess(size=(40, 40), resize_shorter=44,
                                         interpolation="bicubic")),
    ):  # fmt: skip
        backbone, cfg = module_backbone_cfg(tiny_cnn(seed), name, pre)
        export_backbone(ExportConfig(name, repo=repo, layers=("0", "1", "2")), backbone, cfg)


def optimized_op_types(model, folder, unfused: bool = True) -> Counter:
    """The op types of `model` (a path or serialised bytes) after onnxruntime's CPU fusions
    up to the extended level (where GELU and SkipLayerNormalization are fused; the server
    runs every level), built by `cpu_session` when `unfused`, else with every fusion."""
    import onnxruntime as ort

    from embedder.core.runtime import cpu_session

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(folder / "optimized.onnx")
    if unfused:
        cpu_session(model, options)
    else:
        source = model if isinstance(model, bytes) else str(model)
        ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
