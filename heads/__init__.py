"""Classical heads on cached embeddings: train, evaluate, few-shot curves, compare, advise,
out-of-distribution scores, publish.

Needs scikit-learn, never the server. `train_head` is the front door; it and the rest load
scikit-learn only when first used, so `embedder-heads --help` answers at once.
"""

from __future__ import annotations

__all__ = ["HeadConfig", "TrainedHead", "train_head"]


def __getattr__(name: str):
    if name in __all__:
        from . import train

        return getattr(train, name)
    raise AttributeError(f"module 'heads' has no attribute {name!r}")
