"""One decorator to register a backbone recipe, one front door to build it (like timm)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .config import PretrainedCfg
from .errors import UnknownBackboneError

_FACTORIES: dict[str, Callable[[PretrainedCfg], Any]] = {}
_CFGS: dict[str, PretrainedCfg] = {}


def register_backbone(cfg: PretrainedCfg) -> Callable:
    """Register `factory(cfg) -> Backbone` under cfg.name."""

    def wrap(factory: Callable[[PretrainedCfg], Any]) -> Callable[[PretrainedCfg], Any]:
        if cfg.name in _FACTORIES:
            raise ValueError(f"backbone {cfg.name!r} is registered twice")
        _FACTORIES[cfg.name] = factory
        _CFGS[cfg.name] = cfg
        return factory

    return wrap


def list_backbones(defaults_only: bool = False) -> list[str]:
    return sorted(n for n, c in _CFGS.items() if c.default or not defaults_only)


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    if name not in _CFGS:
        raise UnknownBackboneError(name, sorted(_CFGS))
    return _CFGS[name]


def create_backbone(name: str) -> Any:
    """Build the backbone (loads weights); raises UnknownBackboneError listing valid names."""
    cfg = get_pretrained_cfg(name)
    return _FACTORIES[name](cfg)


def resolve(name: str) -> tuple[Any, PretrainedCfg]:
    """A registered name, or `torchvision:<arch>` / `timm:<arch>` (those libraries download)."""
    prefix, _, arch = name.partition(":")
    if arch:
        from .generic import HUB_PREFIXES

        if prefix not in HUB_PREFIXES:
            raise UnknownBackboneError(name, [f"{p}:<arch>" for p in HUB_PREFIXES])
        return HUB_PREFIXES[prefix](arch)
    return create_backbone(name), get_pretrained_cfg(name)
