"""The export pipeline: backbone -> ONNX -> checks -> variants -> manifest, published atomically.

Everything is written to a hidden temporary folder next to the target and renamed into place
only when every check has passed, so a failed or interrupted export leaves nothing behind.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx

from embedder.core.errors import ManifestError
from embedder.core.manifest import (
    LayerOutput,
    Manifest,
    TensorSpec,
    TextPreprocess,
    sha256_file,
    staged_version,
)
from embedder.core.runtime import cpu_session

from .config import PretrainedCfg
from .errors import (
    ExportError,
    ParityError,
    SanityCheckError,
    UnknownLayerError,
    VersionExistsError,
)
from .fidelity import calibration_feeds, embed_fp32, probe_sets
from .graph_forms import regroup_gelu_file
from .registry import resolve
from .samples import SAMPLE_SENTENCES, sample_pixels
from .variants import build_variant
from .weights import weight_source


@dataclass(frozen=True)
class ExportConfig:
    name: str  # registered backbone name
    repo: Path = Path("models")
    version: str = "1"
    layer: str | None = None  # None: the pooled penultimate features
    # Several cut points in one graph, one pooled output each ("auto": chosen per backbone);
    # the deepest is `features`. Exclusive with `layer`, fp32 only.
    layers: tuple[str, ...] = ()
    output_name: str | None = None  # folder name in the repository; defaults to `name`
    variants: tuple[str, ...] = ()
    overwrite: bool = False
    parity_tolerance: float = 1e-4
    check_sanity: bool = True


@dataclass(frozen=True)
class ExportResult:
    manifest: Manifest
    folder: Path
    size_bytes: int


def sample_inputs(backbone) -> dict[str, np.ndarray]:
    if backbone.modality == "image":
        return {"pixels": sample_pixels(backbone.preprocess)[1]}
    from embedder.core.preprocess import TextTokenizer

    tokenizer_path = backbone.extra_files[backbone.preprocess.tokenizer_file]
    return TextTokenizer(tokenizer_path, backbone.preprocess)(list(SAMPLE_SENTENCES))


def check_parity(session, backbone, inputs, layer: str, tolerance: float,
                 output: str = "features") -> tuple[np.ndarray, float]:  # fmt: skip
    """ONNX Runtime vs the source model on real inputs, and batch-of-one vs full batch."""
    ours = session.run([output], inputs)[0]
    diff = float(np.abs(ours - backbone.reference(inputs, layer)).max())
    single = session.run([output], {k: v[:1] for k, v in inputs.items()})[0]
    batch_diff = float(np.abs(single - ours[:1]).max())
    if not diff <= tolerance or not batch_diff <= tolerance:
        raise ParityError(
            f"ONNX output {output!r} (layer {layer}) differs from the source model by "
            f"{diff:.2e} (batch-of-one vs batch: {batch_diff:.2e}), over the tolerance "
            f"{tolerance:.0e}; the export is wrong - nothing was written"
        )
    return ours, diff


def layer_output_name(layer: str) -> str:
    return f"layer/{layer}"


def cut_layers(config: ExportConfig, backbone, pcfg: PretrainedCfg) -> list[str]:
    """The layers to cut at, shallowest first: `config.layers` ("auto": the backbone's
    chosen block ends, or four spread over its depth ending at its default cut), else the one
    `config.layer` or the backbone's default."""
    valid = backbone.layers()
    if config.layers and config.layer:
        raise ExportError("give --layer (one cut) or --layers (several), not both")
    if config.layers and config.variants:
        raise ExportError(
            "--layers exports fp32 only (variants and their gates are made for one output); "
            "export the layer you choose with --variants after"
        )
    if config.layers == ("auto",):
        chosen = list(pcfg.auto_layers) if pcfg and pcfg.auto_layers else spread_layers(backbone)
    else:
        chosen = list(config.layers) or [config.layer or backbone.default_layer]
    for layer in chosen:
        if layer is None or layer not in valid:
            raise UnknownLayerError(layer, valid)
    return sorted(set(chosen), key=valid.index)


def spread_layers(backbone, count: int = 4) -> list[str]:
    """`count` layers evenly spread over the depth up to the default cut, which is the last."""
    valid = backbone.layers()
    default = backbone.default_layer
    last = valid.index(default) if default in valid else len(valid) - 1
    picks = np.linspace(last, last / count, count).round().astype(int)
    return [valid[i] for i in sorted(set(picks.tolist()))]


def check_sanity(backbone, pcfg: PretrainedCfg) -> dict[str, int]:
    """With the original head, the bundled photos must get plausible ImageNet labels."""
    if pcfg.sanity is None:
        return {}
    names, pixels = sample_pixels(backbone.preprocess)
    logits = backbone.logits(pixels)
    if logits is None:
        return {}
    top1 = dict(zip(names, logits.argmax(1).tolist(), strict=True))
    wrong = {n: top1[n] for n, ok in pcfg.sanity.expected.items() if top1[n] not in ok}
    if wrong:
        raise SanityCheckError(
            f"{pcfg.name}: the pretrained head labels {wrong} (ImageNet class indices), expected "
            f"{ {n: sorted(v) for n, v in pcfg.sanity.expected.items()} }; the weights are "
            "loaded wrongly or are not the ImageNet weights"
        )
    return {n: top1[n] for n in pcfg.sanity.expected}


def input_specs(backbone) -> tuple[TensorSpec, ...]:
    if backbone.modality == "image":
        h, w = backbone.preprocess.size
        return (TensorSpec("pixels", "uint8", ("batch", h, w, 3)),)
    return tuple(
        TensorSpec(n, "int64", ("batch", "sequence")) for n in ("input_ids", "attention_mask")
    )


def export_backbone(
    config: ExportConfig, backbone=None, pretrained_cfg: PretrainedCfg | None = None
) -> ExportResult:
    """Export `config.name` (or the given backbone and its cfg) into `repo/<name>/<version>/`."""
    started = time.perf_counter()
    default_name = pretrained_cfg.name if pretrained_cfg else config.name.replace(":", "_")
    if config.layers:  # not the single-cut model of the same backbone
        default_name += "_layers"
    name = config.output_name or default_name
    target = Path(config.repo) / name / config.version
    if target.exists() and not config.overwrite:
        raise VersionExistsError(f"{target} exists; pass --overwrite to replace it")
    if backbone is None:  # built only after the cheap checks: loading weights takes seconds
        backbone, pretrained_cfg = resolve(config.name)
    pcfg = pretrained_cfg
    layers = cut_layers(config, backbone, pcfg)
    try:
        with staged_version(target, config.overwrite) as staging:
            manifest = _export_into(staging, config, pcfg, backbone, layers, name, started)
    except ManifestError as exc:  # another export took the version meanwhile
        raise VersionExistsError(str(exc)) from exc
    size = sum(p.stat().st_size for p in target.iterdir())
    return ExportResult(manifest=manifest, folder=target, size_bytes=size)


def _export_into(staging, config, pcfg, backbone, layers, name, started) -> Manifest:
    layer = layers[-1]
    is_default_cut = layer == backbone.default_layer
    # The source model's own head on the sample photos, before the slow part: wrong weights
    # fail here, not after an ONNX export and its parity check.
    sanity = check_sanity(backbone, pcfg) if config.check_sanity and is_default_cut else {}
    model_path = staging / "model.onnx"
    outputs = [layer_output_name(layer) for layer in layers[:-1]] + ["features"]
    backbone.export_onnx(model_path, layers, outputs)
    regroup_gelu_file(model_path)  # into the form onnxruntime fuses
    onnx.checker.check_model(str(model_path))
    session = cpu_session(model_path)
    inputs = sample_inputs(backbone)
    layer_outputs = []
    for layer, output in zip(layers, outputs, strict=True):
        features, diff = check_parity(session, backbone, inputs, layer, config.parity_tolerance,
                                      output)  # fmt: skip
        layer_outputs.append(LayerOutput(layer, output, int(features.shape[1]),
                                         backbone.pooling(layer), diff))  # fmt: skip
    diff = max(o.parity_max_abs_diff for o in layer_outputs)
    probes = probe_sets(backbone) if config.variants else []
    embed_fp32(probes, session)
    calibration = calibration_feeds(backbone) if "int8" in config.variants else []
    variants = {v: build_variant(v, staging, inputs, features, probes, calibration)
                for v in config.variants}  # fmt: skip
    for filename, src in backbone.extra_files.items():
        shutil.copyfile(src, staging / filename)
    preprocess = backbone.preprocess
    if isinstance(preprocess, TextPreprocess):  # served with the model: checked at load
        digest = sha256_file(staging / preprocess.tokenizer_file)
        preprocess = replace(preprocess, tokenizer_sha256=digest)
    model = onnx.load(str(model_path), load_external_data=False)
    manifest = Manifest(
        name=name,
        version=config.version,
        modality=backbone.modality,
        inputs=input_specs(backbone),
        output=TensorSpec("features", "float32", ("batch", int(features.shape[1]))),
        dim=int(features.shape[1]),
        preprocess=preprocess,
        layer=layer,
        pooling=backbone.pooling(layer),
        normalized=bool(backbone.normalized),
        opset=next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        file=model_path.name,
        sha256=sha256_file(model_path),
        source=weight_source(pcfg.weights),
        parity_max_abs_diff=diff,
        export_seconds=round(time.perf_counter() - started, 2),
        exported_at=datetime.now(UTC).isoformat(timespec="seconds"),
        variants=variants,
        sanity_top1=sanity,
        layer_outputs=tuple(layer_outputs) if len(layers) > 1 else (),
    )
    manifest.write(staging)
    return manifest
