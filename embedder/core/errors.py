"""Errors raised on purpose; each message says what to do about it."""

from __future__ import annotations

ECHO_CHARS = 200  # of a caller's input quoted back in a message (a status fits gRPC's metadata)


def shorten(text: str, limit: int = ECHO_CHARS) -> str:
    """`text` cut to `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit:,} more characters)"


def echo(value: object) -> str:
    """A caller's value as an error message quotes it: repr, shortened."""
    return shorten(repr(value))


class EmbedderError(Exception):
    """Base class for every error this package raises on purpose."""


class ConfigError(EmbedderError, ValueError):
    """A setting is out of its valid range. `setting`: the config field, which a command line
    names by its flag (--max-batch-size for max_batch_size)."""

    def __init__(self, message: str, setting: str = ""):
        super().__init__(message)
        self.setting = setting

    def for_flags(self) -> str:
        """The message as a command line should say it: the flag, not the field."""
        if not self.setting:
            return str(self)
        return str(self).replace(self.setting, "--" + self.setting.replace("_", "-"), 1)


class ManifestError(EmbedderError):
    """A manifest.json is missing, malformed, or does not match its model file."""


class InputError(EmbedderError, ValueError):
    """A request or one of its items cannot be used (undecodable image, empty text, too large).

    `index` and `field` say which item and which of its inputs ("image", "text", "tensor"), so
    a transport can point at it (gRPC: a BadRequest field violation `items[3].image`) and a
    caller can retry the rest without parsing the message."""

    def __init__(self, reason: str, index: int | None = None, field: str = ""):
        self.reason, self.index, self.field = reason, index, field
        super().__init__(reason if index is None else f"item {index}: {reason}")

    def at(self, index: int, field: str = "") -> InputError:
        """This error, for item `index` of the caller's request."""
        return InputError(self.reason, index, field or self.field)


class ModelNotFoundError(EmbedderError, LookupError):
    """No loaded model has this name / version."""


class QueueFullError(EmbedderError):
    """The model's batching queue is full; retry with backoff or raise max_queue_size."""


class MessageTooLargeError(EmbedderError):
    """A request or its answer would be over the server's message size limit."""


class DeadlineExceededError(EmbedderError):
    """The request's deadline passed before its batch could run."""


class NotReadyError(EmbedderError):
    """The server is still loading or warming up its models."""
