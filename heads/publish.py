"""Publish heads: backbone graph + head graphs composed into one servable ONNX model.

    models/<name>/<version>/model.onnx   pixels / tokens -> features, <head>/scores, ...
                            manifest.json   the backbone's, plus a `heads` block

Several heads on one backbone share one embedding pass. A head trained on another backbone's
embeddings (its recorded digest differs) is refused.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import onnx

from embedder.cache import CacheIdentity
from embedder.core.manifest import HeadSpec, Manifest, sha256_file, staged_version

from .candidates import Part, features_digest
from .compose import feature_graph
from .errors import FeatureError, HeadError
from .ood_graph import ood_graph
from .persist import head_to_onnx, load_head, load_ood

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def backbone_digest(manifest: Manifest) -> str:
    """The digest the cache gives embeddings of this backbone (fp32 file, its preprocessing)."""
    return CacheIdentity.of(manifest, manifest.sha256).digest


def _head_graph(pipeline, info, name: str, dim: int, opset: int, ir_version: int):
    model = head_to_onnx(pipeline, dim, opset)
    outputs = [o.name for o in model.graph.output]  # label, then scores / probabilities
    scores_shape = model.graph.output[1].type.tensor_type.shape
    scores_shape.dim[1].dim_value = len(info.classes)  # skl2onnx declares 1 for two classes
    model = onnx.compose.add_prefix(model, f"{name}/")
    model.ir_version = ir_version
    return model, f"{name}/{outputs[1]}"


def _check_names(target: Path, names: list[str], overwrite: bool) -> None:
    for label in names:
        if not _NAME.match(label) or label in (".", ".."):
            raise HeadError(f"name {label!r}: use letters, digits, '_', '-' or '.'")
    if target.exists() and not overwrite:
        raise HeadError(f"{target} exists; pass --overwrite to replace it")


def publish(backbone_folder: Path, heads: dict[str, Path], repo: Path, name: str,
            version: str = "1", overwrite: bool = False) -> Path:  # fmt: skip
    """Compose the backbone in `backbone_folder` with `heads` (head name -> saved head folder)."""
    target = Path(repo) / name / version
    _check_names(target, [name, version, *heads], overwrite)
    manifest = Manifest.read(backbone_folder)
    manifest.verify(backbone_folder)
    model = onnx.load(str(backbone_folder / manifest.file))
    return _with_heads(model, manifest, backbone_digest(manifest), backbone_folder, heads,
                       target, overwrite)  # fmt: skip


def publish_features(repo: Path, parts: tuple[Part, ...], heads: dict[str, Path], name: str,
                     version: str = "1", overwrite: bool = False) -> Path:  # fmt: skip
    """Compose the graph of a feature set (one or two backbones' cut points, concatenated)
    with `heads` trained on it: what `embedder-heads advise --publish` serves."""
    target = Path(repo) / name / version
    _check_names(target, [name, version, *heads], overwrite)
    model, manifest = feature_graph(Path(repo), parts)
    first = Path(repo) / parts[0].model / parts[0].version
    return _with_heads(model, manifest, features_digest(parts), first, heads, target, overwrite)


def _with_heads(model, manifest: Manifest, digest: str, source: Path, heads: dict[str, Path],
                target: Path, overwrite: bool) -> Path:  # fmt: skip
    """`model` (its `features` output: the embeddings with `digest`) with each head's graph."""
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    specs, outputs = {}, ["features"]
    for head_name, folder in heads.items():
        pipeline, info = load_head(folder)
        if info.backbone.get("digest") != digest:
            raise FeatureError(
                f"head {head_name!r} was trained on embeddings with digest "
                f"{info.backbone.get('digest')}, but {manifest.name}/{manifest.version} gives "
                f"{digest}; train it on this backbone's cached features"
            )
        head, scores = _head_graph(pipeline, info, head_name, manifest.dim, opset, model.ir_version)
        io_map = [("features", f"{head_name}/features")]
        keep = outputs + [o.name for o in head.graph.output]
        model = onnx.compose.merge_models(model, head, io_map=io_map, outputs=keep)
        outputs = keep
        score_kind = "probability" if info.kind == "logreg" else "decision"
        specs[head_name] = HeadSpec(tuple(info.classes), info.kind, scores, score_kind, digest)
        scorer = load_ood(folder, info)
        if scorer is not None:  # the head's OOD score, one (N,) output beside its scores
            graph = onnx.compose.add_prefix(
                ood_graph(scorer, manifest.dim, opset, model.ir_version), f"{head_name}/ood/"
            )
            ood = f"{head_name}/ood/ood_score"
            outputs = [*outputs, ood]
            model = onnx.compose.merge_models(
                model, graph, io_map=[("features", f"{head_name}/ood/features")], outputs=outputs
            )
            specs[head_name] = dataclasses.replace(
                specs[head_name], ood_output=ood, ood_kind=scorer.kind,
                ood_threshold=scorer.threshold, ood_accept=scorer.calibration["accept_target"],
            )  # fmt: skip
    return _write(model, manifest, source, target, specs, overwrite)


def _write(model, manifest, source: Path, target: Path, specs, overwrite: bool) -> Path:
    onnx.checker.check_model(model)
    with staged_version(target, overwrite) as staging:
        onnx.save(model, str(staging / "model.onnx"))
        extra = getattr(manifest.preprocess, "tokenizer_file", None)
        if extra:
            shutil.copyfile(source / extra, staging / extra)
        published = dataclasses.replace(
            manifest, name=target.parent.name, version=target.name, file="model.onnx",
            sha256=sha256_file(staging / "model.onnx"), variants={}, heads=specs,
            layer_outputs=(),
        )  # fmt: skip
        published.write(staging)
    return target
