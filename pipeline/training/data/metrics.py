"""The four segmentation metrics of the FCN paper, computed exactly as its reference ``score.py``.

Everything starts from a confusion histogram ``hist`` (rows = ground truth, columns = prediction):

- pixel accuracy  ``sum_i n_ii / sum_ij n_ij``
- mean accuracy   ``mean_i n_ii / t_i`` over classes present in the ground truth
                  (``t_i = sum_j n_ij``)
- mean IU         ``mean_i n_ii / (t_i + sum_j n_ji - n_ii)`` over classes present in the ground
                  truth or the prediction (a class only predicted scores IU 0 and counts)
- frequency-weighted IU ``sum_i (t_i / sum_k t_k) * IU_i`` over classes present in the ground truth

Pure numpy; no file or tensor types.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray


def confusion(gt: ArrayLike, pred: ArrayLike, num_classes: int, ignore_index: int = 255) -> NDArray[np.int64]:
    """Confusion histogram of one or many label maps (any equal shapes), rows = gt, columns = pred.

    Pixels whose ground truth is ``ignore_index`` or outside ``[0, num_classes)`` are dropped; a
    prediction outside that range on a kept pixel raises ``ValueError``.
    """
    if np.shape(gt) != np.shape(pred):
        raise ValueError(f"ground truth {np.shape(gt)} and prediction {np.shape(pred)} differ")
    # int64 before the arithmetic: num_classes * gt overflows uint8 label maps.
    gt_arr = np.asarray(gt).astype(np.int64, copy=False).ravel()
    pred_arr = np.asarray(pred).astype(np.int64, copy=False).ravel()
    keep = (gt_arr >= 0) & (gt_arr < num_classes) & (gt_arr != ignore_index)
    gt_arr, pred_arr = gt_arr[keep], pred_arr[keep]
    if pred_arr.size and (pred_arr.min() < 0 or pred_arr.max() >= num_classes):
        raise ValueError(f"predicted classes must lie in [0, {num_classes})")
    counts = np.bincount(num_classes * gt_arr + pred_arr, minlength=num_classes**2)
    return counts.reshape(num_classes, num_classes).astype(np.int64, copy=False)


def per_class_iu(hist: NDArray[np.int64]) -> NDArray[np.float64]:
    """Intersection over union of each class; NaN for a class absent from both gt and prediction."""
    diag = np.diag(hist)
    with np.errstate(divide="ignore", invalid="ignore"):
        iu: NDArray[np.float64] = diag / (hist.sum(1) + hist.sum(0) - diag)
    return iu


def scores(hist: NDArray[np.int64]) -> dict[str, float]:
    """``pixel_accuracy``, ``mean_accuracy``, ``mean_iu`` and ``fw_iu`` of a confusion histogram.

    An empty histogram (no labelled pixel) scores NaN, except fw IU: 0.0, as in the reference's
    ``score.py``, whose weighted sum runs over the classes of nonzero frequency and so over none.
    """
    if hist.sum() == 0:
        nan = float("nan")
        return {"pixel_accuracy": nan, "mean_accuracy": nan, "mean_iu": nan, "fw_iu": 0.0}
    diag = np.diag(hist)
    iu = per_class_iu(hist)
    freq = hist.sum(1) / hist.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        class_accuracy = diag / hist.sum(1)
    return {
        "pixel_accuracy": float(diag.sum() / hist.sum()),
        "mean_accuracy": float(np.nanmean(class_accuracy)),
        "mean_iu": float(np.nanmean(iu)),
        "fw_iu": float((freq[freq > 0] * iu[freq > 0]).sum()),
    }


class ConfusionMatrix:
    """Accumulates the confusion histogram over many images; score it at any point."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.hist = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, gt: ArrayLike, pred: ArrayLike) -> None:
        """Add one label map (or a batch of them) and its prediction."""
        self.hist += confusion(gt, pred, self.num_classes, self.ignore_index)

    def scores(self) -> dict[str, float]:
        """Score everything added so far with the four FCN metrics."""
        return scores(self.hist)

    def per_class_iu(self) -> NDArray[np.float64]:
        """Return the per-class IU of everything added so far."""
        return per_class_iu(self.hist)
