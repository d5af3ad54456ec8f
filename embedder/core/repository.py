"""The model repository on disk: `<root>/<name>/<version>/manifest.json` and the files it names.

`ModelRepository.load` opens every model and version and refuses the broken ones (the server);
`open_model` opens one (batch export, the sklearn transformer). Both pick versions the same way:
the highest number, or the one asked for.
"""

from __future__ import annotations

import logging
from pathlib import Path

from embedder.core.cli import closest
from embedder.core.config import SessionConfig
from embedder.core.errors import EmbedderError, ModelNotFoundError, echo
from embedder.core.manifest import MANIFEST_NAME, Manifest
from embedder.core.runtime import ModelSession, open_session

log = logging.getLogger(__name__)


def version_key(version: str) -> tuple[int, int | str]:
    return (0, int(version)) if version.isdigit() else (1, version)


def pick_version(name: str, versions: list[str], wanted: str = "") -> str:
    """`wanted`, or the highest version when it is empty; a clear error when there is none."""
    if not versions:
        raise ModelNotFoundError(f"no model {echo(name)}; export it first")
    if not wanted:
        return max(versions, key=version_key)
    if wanted not in versions:
        raise ModelNotFoundError(
            f"model {echo(name)} has no version {echo(wanted)}; have {', '.join(sorted(versions))}"
        )
    return wanted


def model_folder(root: str | Path, name: str, version: str = "") -> Path:
    """The folder of `name` at `version` (default: the highest) in the repository at `root`."""
    base = Path(root) / name
    found = base.iterdir() if base.is_dir() else []
    versions = [p.name for p in found if p.is_dir() and not p.name.startswith(".")]
    if not versions:
        have = closest(name, model_names(root)) or "none; export one with embedder-export"
        raise ModelNotFoundError(f"no model {echo(name)} in {root}; it has: {have}")
    return base / pick_version(name, versions, version)


def model_names(root: str | Path) -> list[str]:
    """The names of the models in the repository at `root`."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.parent.parent.name for p in root.glob(f"*/*/{MANIFEST_NAME}")
                  if not p.parent.name.startswith("."))  # fmt: skip


def open_model(root: str | Path, name: str, version: str = "",
               config: SessionConfig | None = None, buckets: tuple[int, ...] | None = None,
               manifest: Manifest | None = None) -> ModelSession:  # fmt: skip
    """One model's session, its files checked against its manifest (read from its folder when
    not given)."""
    folder = model_folder(root, name, version)
    return open_session(folder, manifest or Manifest.read(folder), config, buckets)


class ModelRepository:
    """name -> version -> ModelSession, for the servable models only."""

    def __init__(self, models: dict[str, dict[str, ModelSession]], refused: dict[str, str]):
        self.models, self.refused = models, refused

    @classmethod
    def load(cls, root: str | Path, config: SessionConfig, buckets: tuple[int, ...] | None = None,
             names: tuple[str, ...] = ()) -> ModelRepository:  # fmt: skip
        """Every model in `root`, or only those `names`."""
        root = Path(root)
        if not root.is_dir():
            raise EmbedderError(f"model repository {root} is not a folder; export models first")
        have = model_names(root)
        for name in names:
            if name not in have:
                raise ModelNotFoundError(f"no model {echo(name)} in {root}; it has: "
                                         f"{closest(name, have) or 'none'}")  # fmt: skip
        models: dict[str, dict[str, ModelSession]] = {}
        refused: dict[str, str] = {}
        for manifest_path in sorted(root.glob(f"*/*/{MANIFEST_NAME}")):
            folder = manifest_path.parent
            if folder.name.startswith("."):  # an export still in progress
                continue
            if names and folder.parent.name not in names:
                continue
            key = f"{folder.parent.name}/{folder.name}"
            try:
                manifest = Manifest.read(folder)
                session = open_session(folder, manifest, config, buckets)
            except Exception as exc:  # one broken model must not stop the others
                log.error("refusing model %s: %s", key, exc)
                refused[key] = str(exc)
                continue
            models.setdefault(manifest.name, {})[manifest.version] = session
        return cls(models, refused)

    def refuse(self, session: ModelSession, reason: Exception) -> None:
        """Take a loaded model out of service (it failed after its session opened)."""
        m = session.manifest
        log.error("refusing model %s/%s: %s", m.name, m.version, reason)
        self.refused[f"{m.name}/{m.version}"] = str(reason)
        versions = self.models[m.name]
        del versions[m.version]
        if not versions:
            del self.models[m.name]

    def get(self, name: str, version: str = "") -> ModelSession:
        versions = self.models.get(name)
        if not versions:
            loaded = closest(name, sorted(self.models)) or "none"
            raise ModelNotFoundError(f"unknown model {echo(name)}; loaded: {loaded}")
        return versions[pick_version(name, list(versions), version)]

    def all(self) -> list[ModelSession]:
        return [s for name in sorted(self.models) for _, s in sorted(self.models[name].items())]
