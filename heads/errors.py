"""Head errors; each message says what to do about it."""


class HeadError(Exception):
    """Base class for every error this package raises on purpose."""


class LabelError(HeadError, ValueError):
    """Labels missing, fewer than two classes, or a class too small for the folds."""


class FeatureError(HeadError, ValueError):
    """NaN / inf in features, or features from another backbone than the head's."""


class UntrustedFileError(HeadError):
    """A skops file holds types outside the trusted list; it is not loaded."""
