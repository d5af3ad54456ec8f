"""Export errors; each message names the problem and what to do about it."""


class ExportError(Exception):
    """Base class for every export failure raised on purpose."""


class UnknownBackboneError(ExportError, KeyError):
    def __init__(self, name: str, valid: list[str]):
        self.name, self.valid = name, valid
        super().__init__(name)

    def __str__(self) -> str:
        return f"unknown backbone {self.name!r}; valid names: {', '.join(self.valid)}"


class MissingDependencyError(ExportError, ImportError):
    """A weight package or optional library is not installed; the message names the pip line."""


class WeightsChecksumError(ExportError):
    """A weights file does not have the sha256 its recipe expects."""


class UnknownLayerError(ExportError, ValueError):
    def __init__(self, layer: str | None, valid: list[str]):
        self.layer, self.valid = layer, valid
        super().__init__(layer)

    def __str__(self) -> str:
        shown = ", ".join(self.valid[:40]) + (" ..." if len(self.valid) > 40 else "")
        what = "no cut layer given" if self.layer is None else f"unknown cut layer {self.layer!r}"
        return f"{what}; layers you can cut at: {shown}"


class VersionExistsError(ExportError, FileExistsError):
    """The output version folder exists; pass overwrite=True (--overwrite) to replace it."""


class ParityError(ExportError):
    """The ONNX graph does not reproduce the source model within tolerance."""


class SanityCheckError(ExportError):
    """The pretrained head does not recognise the bundled photos: the weights are wrong."""
