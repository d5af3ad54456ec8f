"""Errors raised by the serving side; each message says what to do about it."""


class EmbedderError(Exception):
    """Base class for every error this package raises on purpose."""


class ManifestError(EmbedderError):
    """A manifest.json is missing, malformed, or does not match its model file."""


class InputError(EmbedderError, ValueError):
    """An input item cannot be preprocessed (undecodable image, empty text, too large)."""
