"""Data: dataset parsers and synthetic domains (lists of samples), then the training-side pipeline."""

from mmt_lib.data.base import DatasetLayoutError, ReidDataset, Sample
from mmt_lib.data.registry import known_datasets, load_dataset

__all__ = ["DatasetLayoutError", "ReidDataset", "Sample", "known_datasets", "load_dataset"]
