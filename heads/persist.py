"""Save and load heads with skops (an explicit list of trusted types; never pickle), and
convert them to ONNX with skl2onnx. A head remembers the classes and the backbone digest it
was trained on, so it cannot be applied to another model's embeddings by mistake."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import FeatureError, HeadError, UntrustedFileError
from .ood import OODScorer
from .train import TrainedHead

TRUSTED_TYPES = [
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.preprocessing._data.Normalizer",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.svm._classes.LinearSVC",
    "sklearn.svm._classes.SVC",
]


@dataclass(frozen=True)
class HeadInfo:
    classes: list[str]
    kind: str
    C: float
    dim: int
    backbone: dict  # model, version, digest of the cached embeddings it was trained on
    # its out-of-distribution scorer (ood.npz beside it): kind, threshold, k, calibration
    ood: dict = field(default_factory=dict)

    def check_backbone(self, backbone: dict) -> None:
        if backbone.get("digest") != self.backbone.get("digest"):
            given = f"{backbone.get('model')} (digest {backbone.get('digest')})"
            mine = f"{self.backbone.get('model')} (digest {self.backbone.get('digest')})"
            raise FeatureError(
                f"these features come from {given}, the head was trained on {mine}; "
                "embed the data with the head's backbone"
            )


def save_head(head: TrainedHead, folder: str | Path, backbone: dict, dim: int,
              ood: OODScorer | None = None) -> Path:  # fmt: skip
    """head.skops + head.json (and ood.npz, its OOD scorer's arrays) in `folder`."""
    import skops.io

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    described = {} if ood is None else {"kind": ood.kind, "threshold": ood.threshold,
                                        "k": ood.k, "calibration": ood.calibration}  # fmt: skip
    info = HeadInfo([str(c) for c in head.classes], head.config.kind, head.C, dim, backbone,
                    described)  # fmt: skip
    skops.io.dump(head.pipeline, folder / ".head.skops.tmp")
    if ood is not None:
        np.savez(folder / ".ood.tmp.npz", **ood.arrays)
    (folder / ".head.json.tmp").write_text(json.dumps(info.__dict__, indent=2) + "\n")
    os.replace(folder / ".head.skops.tmp", folder / "head.skops")  # all written before any
    if ood is not None:
        os.replace(folder / ".ood.tmp.npz", folder / "ood.npz")
    else:
        (folder / "ood.npz").unlink(missing_ok=True)
    os.replace(folder / ".head.json.tmp", folder / "head.json")  # replaces the old set
    return folder


def load_ood(folder: str | Path, info: HeadInfo) -> OODScorer | None:
    """The head's OOD scorer, or None for a head saved without one (arrays only: no pickle)."""
    if not info.ood:
        return None
    with np.load(Path(folder) / "ood.npz", allow_pickle=False) as saved:
        arrays = {k: saved[k] for k in saved.files}
    o = info.ood
    return OODScorer(o["kind"], arrays, float(o["threshold"]), int(o["k"]), o["calibration"])


# Nodes of a skops file that hold plain data; every other node names a type or a function,
# which must be on TRUSTED_TYPES (or be a builtin / numpy scalar type, for TypeNode).
DATA_NODES = {"DictNode", "ListNode", "TupleNode", "JsonNode", "NdArrayNode"}
SCALAR_TYPES = {f"builtins.{t}" for t in ("str", "int", "float", "bool", "complex")} | {
    f"numpy.{t}" for t in ("float16", "float32", "float64", "int32", "int64", "bool_", "str_")
}


def types_in(path: Path) -> set[str]:
    """Every type and function a skops file would create or call, from its schema. skops's
    own `get_untrusted_types` leaves out what it trusts by default (sklearn estimators, numpy
    functions such as numpy.exp inside a FunctionTransformer), so it cannot be the gate."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        schema = json.loads(archive.read("schema.json"))
    found: set[str] = set()
    pending = [schema]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            loader = node.get("__loader__")
            if loader is not None and loader not in DATA_NODES:
                name = f"{node.get('__module__')}.{node.get('__class__')}"
                if loader != "TypeNode" or name not in SCALAR_TYPES:
                    found.add(name)
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return found


def load_head(folder: str | Path):
    """(pipeline, HeadInfo); refuses a file holding any type or function outside
    TRUSTED_TYPES, before anything in it is loaded."""
    import skops.io

    folder = Path(folder)
    path = folder / "head.skops"
    if not path.is_file():
        raise HeadError(f"no head at {folder}: give a folder saved by `embedder-heads train "
                        "--out FOLDER` (head.skops and head.json)")  # fmt: skip
    try:
        unknown = sorted(types_in(path) - set(TRUSTED_TYPES))
    except (OSError, KeyError, ValueError) as exc:  # not a zip, no schema, not JSON
        raise UntrustedFileError(f"{path} is not a skops file ({exc}); it was not loaded") from exc
    if unknown:
        raise UntrustedFileError(
            f"{path} holds types outside the trusted list: {unknown}; it was not loaded"
        )
    pipeline = skops.io.load(path, trusted=skops.io.get_untrusted_types(file=path))
    info = HeadInfo(**json.loads((folder / "head.json").read_text()))
    return pipeline, info


def head_to_onnx(pipeline, dim: int, opset: int = 18):
    """An ONNX graph from (N, dim) float features to `label` and `scores` (N, classes)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    head = pipeline.steps[-1][1]
    # LogisticRegression: probabilities as a plain (N, classes) tensor. SVMs: decision scores,
    # (N, 2) for two classes ([-d, d]); skl2onnx's default options fail inside a Pipeline.
    if isinstance(head, LogisticRegression):
        options = {id(head): {"zipmap": False}}
    else:
        options = {id(head): {"raw_scores": True}}
    return convert_sklearn(
        pipeline,
        initial_types=[("features", FloatTensorType([None, dim]))],
        options=options,
        target_opset={"": opset, "ai.onnx.ml": 3},
    )


def scores_of(pipeline, X: np.ndarray) -> np.ndarray:
    """What the ONNX head's score output holds: probabilities, or decision scores for SVMs."""
    from sklearn.linear_model import LogisticRegression

    if isinstance(pipeline.steps[-1][1], LogisticRegression):
        return pipeline.predict_proba(X)
    scores = pipeline.decision_function(X)
    return np.column_stack([-scores, scores]) if scores.ndim == 1 else scores
