"""The graph that computes a feature set (heads/candidates.py): cut points of one or two
backbones in the repository, concatenated inside the graph as its `features` output, so a
published head sees exactly the columns it was trained on.

Each backbone's graph is cut down to the outputs it contributes, its tensors prefixed with its
name so two graphs cannot collide, both brought to one opset; the first keeps its input names,
the second image backbone gets its own pixel input with its own resize and crop in the
manifest (`extra_inputs`), so the server decodes once and crops twice.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import onnx
from onnx import helper, version_converter

from embedder.cache import CacheIdentity
from embedder.core.manifest import Manifest, TensorSpec

from .candidates import Part
from .errors import FeatureError, HeadError

OPSET = 18


def feature_graph(repo: Path, parts: tuple[Part, ...]) -> tuple[onnx.ModelProto, Manifest]:
    """The graph from the first backbone's inputs to `features`, the parts' outputs side by
    side in their order, and its manifest (no heads yet; the first backbone's, re-described)."""
    groups: dict[tuple[str, str], list[Part]] = {}
    for part in parts:
        groups.setdefault((part.model, part.version), []).append(part)
    if len(groups) > 2:
        raise HeadError(f"a feature set of {len(groups)} backbones; at most two are composed")
    graphs, manifests, tensors = [], [], []
    for i, ((model, version), group) in enumerate(groups.items()):
        folder = Path(repo) / model / version
        manifest = Manifest.read(folder)
        manifest.verify(folder, ("fp32",))
        outputs = [_output_of(manifest, part) for part in group]
        graph = _cut(folder / manifest.file, [t.name for t in manifest.inputs], outputs)
        graph = onnx.compose.add_prefix(graph, f"{model}/")
        if i == 0:  # the first backbone's inputs keep their names
            for spec in manifest.inputs:
                _rename(graph.graph, f"{model}/{spec.name}", spec.name)
        elif manifest.modality != "image" or manifests[0].modality != "image":
            raise HeadError("two backbones are composed into one graph only when both are image "
                            "models (two tokenisers cannot share one text input)")  # fmt: skip
        graphs.append(graph)
        manifests.append(manifest)
        tensors += [f"{model}/{o}" for o in outputs]
    model = graphs[0] if len(graphs) == 1 else _merged(graphs)
    concat = helper.make_node("Concat", tensors, ["features"], axis=1, name="features/concat")
    model.graph.node.append(concat)
    del model.graph.output[:]
    dim = sum(p.dim for p in parts)
    model.graph.output.append(
        helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, ["batch", dim])
    )
    onnx.checker.check_model(model)
    return model, _manifest(manifests, parts, dim)


def _output_of(manifest: Manifest, part: Part) -> str:
    """The graph output of `part`'s layer; its digest must be the one this file gives."""
    layer = manifest.layer_output(part.layer) if manifest.layer_outputs else None
    if layer is None and part.layer != manifest.layer:
        raise FeatureError(f"{manifest.name} is cut at {manifest.layer}, not {part.layer}")
    digest = CacheIdentity.of(manifest, manifest.sha256, layer).digest
    if digest != part.digest:
        raise FeatureError(
            f"the features of {part.model}:{part.layer} were cached from another file (digest "
            f"{part.digest}, this model gives {digest}); embed the data again"
        )
    return layer.output if layer else "features"


def _cut(path: Path, inputs: list[str], outputs: list[str]) -> onnx.ModelProto:
    """The graph from `inputs` to `outputs` alone, at OPSET."""
    with tempfile.TemporaryDirectory() as tmp:
        cut = Path(tmp) / "cut.onnx"
        onnx.utils.extract_model(str(path), str(cut), inputs, outputs)
        model = onnx.load(str(cut))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return version_converter.convert_version(model, OPSET) if opset != OPSET else model


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for value in graph.input:
        if value.name == old:
            value.name = new
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]


def _merged(graphs: list[onnx.ModelProto]) -> onnx.ModelProto:
    ir = max(g.ir_version for g in graphs)
    for g in graphs:
        g.ir_version = ir
    return onnx.compose.merge_models(graphs[0], graphs[1], io_map=[])


def _manifest(manifests: list[Manifest], parts: tuple[Part, ...], dim: int) -> Manifest:
    first = manifests[0]
    layers = " + ".join(f"{m.name}:{'+'.join(p.layer for p in parts if p.model == m.name)}"
                        for m in manifests)  # fmt: skip
    extra = {}
    inputs = first.inputs
    for m in manifests[1:]:
        name = f"{m.name}/pixels"
        extra[name] = m.preprocess
        inputs += (TensorSpec(name, "uint8", ("batch", *m.preprocess.size, 3)),)
    return dataclasses.replace(
        first, inputs=inputs, output=TensorSpec("features", "float32", ("batch", dim)), dim=dim,
        layer=layers, normalized=first.normalized and len(parts) == 1, opset=OPSET,
        parity_max_abs_diff=max(m.parity_max_abs_diff for m in manifests), variants={},
        sanity_top1={}, layer_outputs=(), extra_inputs=extra,
    )  # fmt: skip
