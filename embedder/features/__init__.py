"""Batch feature export: a dataset embedded into the cache (`embedder-features export`)."""

from embedder.core.sources import SourceItem, image_folder, path_list, text_table
from embedder.features.config import FeaturesConfig, Summary
from embedder.features.run import ENGINES, export_features

__all__ = [
    "ENGINES",
    "FeaturesConfig",
    "SourceItem",
    "Summary",
    "export_features",
    "image_folder",
    "path_list",
    "text_table",
]
