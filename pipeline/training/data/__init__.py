"""Segmentation datasets read as (RGB image, label map) pairs, and the FCN paper's metrics."""

from pipeline.training.data.base import ImageArray, LabelArray, Sample, SegmentationDataset
from pipeline.training.data.metrics import ConfusionMatrix, confusion, per_class_iu, scores
from pipeline.training.data.readers import available_datasets, open_dataset

__all__ = [
    "ConfusionMatrix",
    "ImageArray",
    "LabelArray",
    "Sample",
    "SegmentationDataset",
    "available_datasets",
    "confusion",
    "open_dataset",
    "per_class_iu",
    "scores",
]
