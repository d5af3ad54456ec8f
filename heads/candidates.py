"""What the advisor compares: feature sets made of cut points of one or two backbones.

From a backbone exported at several layers (`embedder-export export NAME --layers auto`) come
each layer alone and the concatenations of its deepest 2..k layers; a backbone exported at one
layer gives that layer. Two backbones' best sets can be joined too, at the price of two forward
passes. A set knows the cached datasets it is made of, so a head trained on it can be checked
against the graph that will compute its features (publish.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Part:
    """One cut point: a layer of a model in the repository, and its cached dataset's digest."""

    model: str
    version: str
    layer: str
    dim: int
    digest: str
    default: bool  # the model's `features` output, what it serves


@dataclass(frozen=True, eq=False)  # compared by identity: it holds an array
class FeatureSet:
    parts: tuple[Part, ...]  # in the order their columns are concatenated
    X: np.ndarray
    ms_per_item: float  # forward passes, decode included, per item (measured)

    @property
    def name(self) -> str:
        by_model: dict[str, list[str]] = {}
        for p in self.parts:
            by_model.setdefault(p.model, []).append(p.layer)
        return " + ".join(f"{m}:{'+'.join(layers)}" for m, layers in by_model.items())

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(p.model for p in self.parts))

    @property
    def passes(self) -> int:
        """Forward passes an item costs (one per backbone)."""
        return len(self.models)

    @property
    def dim(self) -> int:
        return self.X.shape[1]

    @property
    def is_default_cut(self) -> bool:
        return len(self.parts) == 1 and self.parts[0].default

    @property
    def digest(self) -> str:
        return features_digest(self.parts)


def features_digest(parts: tuple[Part, ...]) -> str:
    """The digest of the concatenated features: a part's own dataset digest when alone."""
    if len(parts) == 1:
        return parts[0].digest
    joined = "+".join(p.digest for p in parts).encode()
    return hashlib.sha256(joined).hexdigest()[:16]


def concatenated(sets: list[FeatureSet]) -> FeatureSet:
    """The sets side by side: their parts in order, their costs added."""
    parts = tuple(p for s in sets for p in s.parts)
    X = np.hstack([s.X for s in sets]).astype(np.float32, copy=False)
    cost = {}  # a model's cost counts once, however many of its layers are used
    for s in sets:
        for model in s.models:
            cost[model] = s.ms_per_item / s.passes
    return FeatureSet(parts, X, float(sum(cost.values())))


def backbone_sets(layers: list[tuple[Part, np.ndarray]], ms_per_item: float) -> list[FeatureSet]:
    """One backbone's candidates from its layers (shallowest first): each layer alone, then
    the deepest 2..k together."""
    singles = [FeatureSet((part,), X, ms_per_item) for part, X in layers]
    deepest = [concatenated(singles[-j:]) for j in range(2, len(singles) + 1)]
    return singles + deepest
