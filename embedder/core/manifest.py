"""manifest.json: the contract between export and serving.

The server reads only the manifest and the ONNX files it names. Everything a user would ask
about a model (where the weights came from, how inputs are preprocessed, how exact the export
is) is recorded here.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from embedder.core.errors import ManifestError

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ImagePreprocess:
    """Resize the shorter side, centre-crop, feed RGB uint8 NHWC; normalisation is in the graph."""

    size: tuple[int, int]  # (height, width) fed to the graph
    resize_shorter: int
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # applied in-graph, 0..1 scale
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    channel_order: str = "RGB"
    layout: str = "NHWC"
    dtype: str = "uint8"
    kind: Literal["image"] = "image"


@dataclass(frozen=True)
class TextPreprocess:
    """Tokenise with tokenizer.json, truncate to max_length, pad to the longest in the batch."""

    tokenizer_file: str = "tokenizer.json"
    tokenizer_sha256: str = ""  # checked at load; part of the cache identity
    max_length: int = 256
    truncation: bool = True
    lowercase: bool = False  # recorded for users; the tokenizer itself applies it
    kind: Literal["text"] = "text"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class WeightSource:
    package: str  # the pip package that carries the weights (or "local" / "hub")
    version: str
    file: str
    sha256: str
    licence: str


@dataclass(frozen=True)
class Variant:
    """A reduced-precision copy of model.onnx and how close it stays to fp32."""

    file: str
    sha256: str
    precision: Literal["fp16", "int8"]
    cosine_to_fp32_min: float  # on the export's sample inputs
    cosine_to_fp32_mean: float
    intended_for: str
    # The fidelity gate measured at export on packaged labelled data (export/fidelity.py):
    # passed, cosine_min, probe_change_points, knn10_overlap, and each probe set's figures.
    gate: dict = field(default_factory=dict)
    # How the file was made (export/quantize.py): scheme, nodes kept in fp32, calibration.
    recipe: dict = field(default_factory=dict)

    def gate_summary(self) -> str:
        """One line for tables, `embedder-client models` and warnings."""
        return gate_summary(self.gate)


def gate_summary(gate: dict) -> str:
    """One line of a fidelity gate's verdict and worst figures (export/fidelity.py's gate)."""
    if not gate:
        return "no fidelity gate recorded (exported before gates; re-export to measure)"
    verdict = "passed" if gate["passed"] else "FAILED"
    probe, overlap = gate["probe_change_points"], gate["knn10_overlap"]
    return (f"fidelity gate {verdict}: cosine min {gate['cosine_min']:.4f}, linear probe "
            f"{probe:+.1f} pt, 10-NN overlap {overlap:.2f}")  # fmt: skip


@dataclass(frozen=True)
class HeadSpec:
    """A classification head composed into the graph after the backbone."""

    classes: tuple[str, ...]
    kind: str  # logreg, linear_svc, rbf_svc
    scores_output: str  # graph output with (N, classes) scores
    score_kind: Literal["probability", "decision"]
    trained_on: str  # digest of the backbone embeddings the head was trained on
    # Out of distribution: an (N,) graph output, higher = more unusual; above the threshold
    # an item is `unknown` (calibrated to accept ood_accept of in-distribution items).
    ood_output: str = ""
    ood_kind: str = ""
    ood_threshold: float | None = None
    ood_accept: float | None = None


@dataclass(frozen=True)
class LayerOutput:
    """One cut point of a model exported at several layers (`--layers`): its pooled graph
    output. The deepest one is `features`, what the model serves."""

    layer: str
    output: str  # graph output name
    dim: int
    pooling: str
    parity_max_abs_diff: float


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    modality: Literal["image", "text"]
    inputs: tuple[TensorSpec, ...]
    output: TensorSpec
    dim: int
    preprocess: ImagePreprocess | TextPreprocess
    layer: str  # where the backbone was cut
    pooling: str
    normalized: bool  # L2-normalised inside the graph
    opset: int
    file: str
    sha256: str
    source: WeightSource
    parity_max_abs_diff: float
    export_seconds: float
    exported_at: str
    variants: dict[str, Variant] = field(default_factory=dict)
    sanity_top1: dict[str, int] = field(default_factory=dict)  # photo -> ImageNet class index
    heads: dict[str, HeadSpec] = field(default_factory=dict)  # published classifiers
    # Several cut points in one graph, shallowest first (empty: `features` alone, at `layer`).
    layer_outputs: tuple[LayerOutput, ...] = ()
    # A graph of two image backbones (a published advisor winner): the second one's pixel
    # input, by name, with its own resize and crop ("pixels" follows `preprocess`).
    extra_inputs: dict[str, ImagePreprocess] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION

    def feature_outputs(self) -> tuple[LayerOutput, ...]:
        """Every cut point the graph outputs, shallowest first; `features` is the last."""
        return self.layer_outputs or (
            LayerOutput(self.layer, "features", self.dim, self.pooling, self.parity_max_abs_diff),
        )

    def layer_output(self, layer: str) -> LayerOutput:
        for out in self.layer_outputs:
            if out.layer == layer:
                return out
        have = ", ".join(o.layer for o in self.layer_outputs) or f"only {self.layer}"
        raise ManifestError(f"model {self.name!r} has no output for layer {layer!r}; it has {have}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Manifest:
        try:
            pre = dict(raw["preprocess"])
            if pre["kind"] == "image":
                preprocess: ImagePreprocess | TextPreprocess = _image_preprocess(pre)
            else:
                preprocess = TextPreprocess(**pre)
            return cls(
                **{
                    **raw,
                    "inputs": tuple(_tensor(t) for t in raw["inputs"]),
                    "output": _tensor(raw["output"]),
                    "preprocess": preprocess,
                    "source": WeightSource(**raw["source"]),
                    "variants": {k: Variant(**v) for k, v in raw.get("variants", {}).items()},
                    "heads": {
                        k: HeadSpec(**{**v, "classes": tuple(v["classes"])})
                        for k, v in raw.get("heads", {}).items()
                    },
                    "layer_outputs": tuple(LayerOutput(**o) for o in raw.get("layer_outputs", ())),
                    "extra_inputs": {
                        k: _image_preprocess(v) for k, v in raw.get("extra_inputs", {}).items()
                    },
                }
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"malformed manifest ({exc!r}); re-export the model") from exc

    @classmethod
    def read(cls, folder: str | Path) -> Manifest:
        path = Path(folder) / MANIFEST_NAME
        if not path.is_file():
            raise ManifestError(f"{path} not found; every model version needs a manifest.json")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(raw)

    def file_sha256(self, precision: str) -> str:
        """The sha256 of the file served at `precision` ("fp32" or an exported variant)."""
        return self.sha256 if precision == "fp32" else self.variants[precision].sha256

    def verify(self, folder: str | Path, precisions: tuple[str, ...] | None = None) -> None:
        """Refuse files that do not match the digests recorded at export: the files served at
        `precisions` ("fp32" or exported variants), or every file when None, and the tokenizer.
        A server checks only what it will load, so a damaged variant it does not serve cannot
        take a model offline."""
        wanted = ("fp32", *self.variants) if precisions is None else precisions
        for precision in wanted:
            name = self.file if precision == "fp32" else self.variants[precision].file
            _check_file(Path(folder) / name, self.file_sha256(precision))
        if isinstance(self.preprocess, TextPreprocess):
            path = Path(folder) / self.preprocess.tokenizer_file
            if not self.preprocess.tokenizer_sha256:
                raise ManifestError(
                    f"{path}: the manifest records no sha256 for it (exported before tokenizers "
                    "were checked); re-export the model"
                )
            _check_file(path, self.preprocess.tokenizer_sha256)


def _check_file(path: Path, expected: str) -> None:
    if not path.is_file():
        raise ManifestError(f"{path} is named in the manifest but missing")
    if (actual := sha256_file(path)) != expected:
        raise ManifestError(
            f"{path.name} sha256 {actual[:12]}... does not match the manifest's "
            f"{expected[:12]}... ({path}): the file is corrupt or was replaced - re-export it"
        )


def _image_preprocess(raw: dict[str, Any]) -> ImagePreprocess:
    pre = {**raw, "size": tuple(raw["size"]), "mean": tuple(raw["mean"]), "std": tuple(raw["std"])}
    return ImagePreprocess(**pre)


def _tensor(raw: dict[str, Any]) -> TensorSpec:
    return TensorSpec(name=raw["name"], dtype=raw["dtype"], shape=tuple(raw["shape"]))


@contextmanager
def staged_version(target: Path, overwrite: bool = True) -> Iterator[Path]:
    """A private folder beside `target` to write a model version into. When the block ends
    without an error it takes `target`'s place (an old version is replaced only once the new
    one is complete, and put back if the rename fails); otherwise it is removed, so a reader
    never sees a half-written version."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield staging
        staging.chmod(0o755)  # mkdtemp makes it private
        if target.exists() and not overwrite:
            raise ManifestError(f"{target} exists; pass --overwrite to replace it")
        _swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_into_place(staging: Path, target: Path) -> None:
    if not target.exists():
        staging.rename(target)
        return
    old = target.with_name(f".{target.name}.replaced-{time.time_ns()}")
    target.rename(old)
    try:
        staging.rename(target)
    except BaseException:
        old.rename(target)  # put the old version back
        raise
    shutil.rmtree(old)
