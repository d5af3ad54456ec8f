"""Text encoders (BERT family) from a local Hugging Face directory.

Mean pooling over the attention mask and L2 normalisation live inside the graph, so the
server only tokenises. Batch and sequence axes are dynamic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from embedder.core.manifest import TextPreprocess

from .errors import MissingDependencyError, UnknownLayerError
from .torch_image import torch_to_onnx
from .weights import require


class MeanPooledEncoder(nn.Module):
    """Mean-pooled hidden states of one layer, or of several (a tuple, in the order of
    `hidden_indices`) from one pass."""

    def __init__(self, model: nn.Module, hidden_indices: int | list[int], normalize: bool):
        super().__init__()
        self.model, self.normalize = model, normalize
        self.single = isinstance(hidden_indices, int)
        self.hidden_indices = [hidden_indices] if self.single else list(hidden_indices)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor | tuple[Tensor, ...]:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=torch.zeros_like(input_ids),
            output_hidden_states=True,
        )
        pooled = tuple(self._pool(out.hidden_states[i], attention_mask)
                       for i in self.hidden_indices)  # fmt: skip
        return pooled[0] if self.single else pooled

    def _pool(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=1) if self.normalize else pooled


class TorchTextBackbone:
    modality = "text"

    def __init__(self, model_dir: Path, preprocess: TextPreprocess, normalize: bool = True):
        transformers = require("transformers", "pip install 'embedder[export]'")
        tokenizer = Path(model_dir) / preprocess.tokenizer_file
        if not tokenizer.is_file():
            raise MissingDependencyError(
                f"{tokenizer} not found; the encoder directory needs a fast-tokenizer "
                "tokenizer.json (save one with AutoTokenizer.from_pretrained(dir).save_pretrained)"
            )
        transformers.utils.logging.disable_progress_bar()  # a local file: no bar to watch
        # Eager attention: its graph runs faster in onnxruntime than SDPA's decomposition
        # (MiniLM, 2 CPU threads, batch 32 x 128 tokens: 54.9 vs 48.7 docs/s), same parity.
        self.model = transformers.AutoModel.from_pretrained(
            str(model_dir), attn_implementation="eager"
        ).eval()
        self.preprocess = preprocess
        self.normalized = normalize
        self.extra_files = {preprocess.tokenizer_file: tokenizer}
        n_layers = self.model.config.num_hidden_layers
        self._layers = ["embeddings"] + [f"encoder.layer.{i}" for i in range(n_layers)]
        self.default_layer = self._layers[-1]

    def layers(self) -> list[str]:
        return list(self._layers)

    def pooling(self, layer: str) -> str:
        return "mean-over-attention-mask"

    def graph(self, layer: str) -> MeanPooledEncoder:
        if layer not in self._layers:
            raise UnknownLayerError(layer, self._layers)
        return MeanPooledEncoder(self.model, self._layers.index(layer), self.normalized).eval()

    def dummy_inputs(self, batch: int = 2) -> dict[str, np.ndarray]:
        ids = np.full((batch, 8), 1000, dtype=np.int64)
        mask = np.ones_like(ids)
        mask[1:, 5:] = 0
        return {"input_ids": ids, "attention_mask": mask}

    def export_onnx(self, path: Path, layers: list[str], outputs: list[str]) -> None:
        """One mean-pooled output per layer (named as `outputs`, in depth order), one pass."""
        for layer in layers:
            if layer not in self._layers:
                raise UnknownLayerError(layer, self._layers)
        if len(layers) == 1:
            graph = self.graph(layers[0])
        else:
            indices = sorted(self._layers.index(layer) for layer in layers)
            graph = MeanPooledEncoder(self.model, indices, self.normalized).eval()
        batch, seq = torch.export.Dim("batch", min=1), torch.export.Dim("sequence", min=1)
        dummy = tuple(torch.from_numpy(v) for v in self.dummy_inputs().values())
        names = ["input_ids", "attention_mask"]
        torch_to_onnx(graph, dummy, path, names, ({0: batch, 1: seq},) * 2, outputs)

    @torch.no_grad()
    def reference(self, inputs: dict[str, np.ndarray], layer: str) -> np.ndarray:
        tensors = (
            torch.from_numpy(inputs["input_ids"]),
            torch.from_numpy(inputs["attention_mask"]),
        )
        return self.graph(layer)(*tensors).numpy()

    def logits(self, inputs) -> None:
        return None
