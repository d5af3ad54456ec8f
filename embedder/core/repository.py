"""Load every model and version in a repository folder; refuse the broken ones, serve the rest."""

from __future__ import annotations

import logging
from pathlib import Path

from embedder.core.config import ServerConfig
from embedder.core.errors import EmbedderError, ModelNotFoundError, echo
from embedder.core.manifest import MANIFEST_NAME, Manifest
from embedder.core.runtime import ModelSession, open_session

log = logging.getLogger(__name__)


def version_key(version: str) -> tuple[int, int | str]:
    return (0, int(version)) if version.isdigit() else (1, version)


class ModelRepository:
    """name -> version -> ModelSession, for the servable models only."""

    def __init__(self, models: dict[str, dict[str, ModelSession]], refused: dict[str, str]):
        self.models, self.refused = models, refused

    @classmethod
    def load(cls, config: ServerConfig) -> ModelRepository:
        root = Path(config.repository)
        if not root.is_dir():
            raise EmbedderError(f"model repository {root} is not a folder; export models first")
        models: dict[str, dict[str, ModelSession]] = {}
        refused: dict[str, str] = {}
        for manifest_path in sorted(root.glob(f"*/*/{MANIFEST_NAME}")):
            folder = manifest_path.parent
            if folder.name.startswith("."):  # an export still in progress
                continue
            key = f"{folder.parent.name}/{folder.name}"
            try:
                manifest = Manifest.read(folder)
                session = open_session(folder, manifest, config)
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
            raise ModelNotFoundError(
                f"unknown model {echo(name)}; loaded: {', '.join(sorted(self.models)) or 'none'}"
            )
        if not version:
            return versions[max(versions, key=version_key)]
        if version not in versions:
            raise ModelNotFoundError(
                f"model {echo(name)} has no version {echo(version)}; "
                f"loaded: {', '.join(sorted(versions))}"
            )
        return versions[version]

    def all(self) -> list[ModelSession]:
        return [s for name in sorted(self.models) for _, s in sorted(self.models[name].items())]
