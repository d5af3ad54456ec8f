"""The advisor's inputs: the labelled items embedded by each backbone (one batch export per
backbone, every cut point of a multi-layer model from one pass, into the cache), each cut
point read back as its own feature set, and each backbone's cost per item measured."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from embedder.cache import dataset_folder, load_features
from embedder.core.inputs import Preprocessor, RawItem
from embedder.core.sources import SourceItem
from embedder.features import FeaturesConfig, export_features
from embedder.features.local import batch_session

from .candidates import FeatureSet, Part, backbone_sets
from .errors import FeatureError, LabelError

COST_ITEMS = 16  # items timed per backbone: decoded or tokenised, then one forward pass


@dataclass(frozen=True)
class Embedded:
    sets: dict[str, list[FeatureSet]]  # backbone -> its candidate feature sets
    y: np.ndarray
    sources: np.ndarray  # each row's file or table row, in the rows' order
    seconds: float  # the batch exports, decoding included


def embed_backbones(
    items: list[SourceItem], backbones: list[str], config: FeaturesConfig
) -> Embedded:
    """Batch-export `items` with each backbone (cached items are read, not recomputed) and
    return every cut point's features, rows aligned across backbones."""
    started = time.perf_counter()
    layers: dict[str, list] = {}
    for model in backbones:
        summary = export_features(items, replace(config, model=model))
        runs = summary.layers or {None: summary.run_file}
        layers[model] = [
            (layer, load_features(run), dataset_folder(run).name) for layer, run in runs.items()
        ]
    seconds = time.perf_counter() - started
    keys, y, sources = common_rows(layers)
    sets = {}
    for model, loaded in layers.items():
        session = batch_session(replace(config, model=model, intra_op_threads=0))
        m = session.manifest
        parts = []
        for layer, features, digest in loaded:
            layer = layer or m.layer
            rows = _rows_of(features.keys, keys)
            part = Part(m.name, m.version, layer, features.X.shape[1], digest, layer == m.layer)
            parts.append((part, features.X[rows]))
        sets[model] = backbone_sets(parts, cost_per_item(session, items, config))
    return Embedded(sets, y, sources, seconds)


def common_rows(layers: dict[str, list]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The keys every backbone embedded (an item one of them could not read is left out),
    in the first backbone's order, with their labels and sources."""
    first = next(iter(layers.values()))[0][1]
    if first.y is None:
        raise LabelError("the items have no labels: use --labels-from-folders or --label-column")
    common = set(first.keys)
    for loaded in layers.values():
        common &= set(loaded[0][1].keys)
    if len(common) < 2:
        raise FeatureError("the backbones embedded fewer than two of the same items")
    keep = np.array([k in common for k in first.keys])
    return first.keys[keep], first.y[keep], first.sources[keep]


def _rows_of(keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    position = {k: i for i, k in enumerate(keys)}
    return np.array([position[k] for k in wanted])


def cost_per_item(session, items: list[SourceItem], config: FeaturesConfig) -> float:
    """Milliseconds an item costs this backbone, decode or tokenising and every cut point's
    forward pass, over COST_ITEMS items at once on every core (a second, timed round)."""
    sample = [i for i in items if i.error is None][:COST_ITEMS]
    pre = Preprocessor(session.manifest, session.folder, config.max_image_pixels)
    elapsed = 0.0
    for _ in range(2):  # the first round warms the session up
        started = time.perf_counter()
        if session.manifest.modality == "text":
            arrays = pre.texts([i.text for i in sample])
        else:
            arrays = [
                pre.image(n, RawItem("image", Path(i.path).read_bytes()))
                for n, i in enumerate(sample)
            ]
        session.layer_features(pre.collate(arrays))
        elapsed = time.perf_counter() - started
    return 1000 * elapsed / len(sample)
