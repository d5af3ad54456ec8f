"""Classical heads on cached embeddings: train, evaluate, few-shot curves, compare.

Needs scikit-learn, never the server. `train_head` is the front door.
"""

from .train import HeadConfig, TrainedHead, train_head

__all__ = ["HeadConfig", "TrainedHead", "train_head"]
