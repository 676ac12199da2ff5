"""Class weights for the loss: median-frequency balancing, as SegNet trains on CamVid.

Eigen & Fergus (ICCV 2015) weight class ``c`` by ``median_freq / freq(c)``, where ``freq(c)`` is
the number of pixels of class ``c`` divided by the number of pixels of the images in which ``c``
appears, and ``median_freq`` the median of those frequencies. Rare classes (poles, sign symbols)
then weigh more than common ones (road, sky), and a class of median frequency weighs 1. SegNet's
CamVid models train with these weights (``class_weighting`` in SegNet-Tutorial's prototxts).

Counted over the training split's labels, ignored pixels left out. A class that never appears
gets weight 0: it has no pixels to weigh, and no frequency to take part in the median.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from fcn.errors import FcnpipeError
from pipeline.training.data.base import SegmentationDataset

CLASS_WEIGHTINGS = ("none", "median-frequency")


def class_pixel_counts(dataset: SegmentationDataset) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Per class: its pixels over the split, and the labelled pixels of the images it appears in."""
    k = dataset.num_classes
    pixels = np.zeros(k, np.int64)
    image_pixels = np.zeros(k, np.int64)
    for key in dataset.keys:
        label = dataset.load_label(key).ravel()
        counts = np.bincount(label[(label >= 0) & (label < k)], minlength=k)
        pixels += counts
        image_pixels[counts > 0] += counts.sum()
    return pixels, image_pixels


def median_frequency_weights(dataset: SegmentationDataset) -> NDArray[np.float64]:
    """``median_freq / freq(c)`` for every class of ``dataset`` (0 for classes that never appear)."""
    pixels, image_pixels = class_pixel_counts(dataset)
    present = pixels > 0
    if not present.any():
        raise FcnpipeError(
            f"the {dataset.split} split of {dataset.name} has no labelled pixel, so class weights "
            "cannot be computed from it."
        )
    freq = pixels[present] / image_pixels[present]
    weights = np.zeros(dataset.num_classes)
    weights[present] = np.median(freq) / freq
    return weights


def class_weights(weighting: str, dataset: SegmentationDataset) -> NDArray[np.float64] | None:
    """The loss's per-class weights for ``weighting`` (``none``: unweighted, None)."""
    if weighting == "none":
        return None
    if weighting == "median-frequency":
        return median_frequency_weights(dataset)
    choices = ", ".join(CLASS_WEIGHTINGS)
    raise FcnpipeError(f"unknown class weighting {weighting!r}; choose one of: {choices}.")
