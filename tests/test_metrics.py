"""The FCN metrics against confusion matrices worked out by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pipeline.training.data.metrics import ConfusionMatrix, confusion, per_class_iu, scores
from pipeline.training.evaluation import write_report

# Four classes; class 3 never occurs in the ground truth but is predicted once; two pixels are void
# (255) and their predictions must not count.
GT = np.array([[0, 0, 0, 1], [1, 2, 255, 255]])
PRED = np.array([[0, 0, 3, 1], [0, 2, 1, 3]])
# Kept pixels (gt, pred): (0,0) (0,0) (0,3) (1,1) (1,0) (2,2)
HIST = np.array(
    [
        [2, 0, 0, 1],
        [1, 1, 0, 0],
        [0, 0, 1, 0],
        [0, 0, 0, 0],
    ]
)


def test_confusion_counts_gt_rows_and_pred_columns_and_drops_void() -> None:
    hist = confusion(GT, PRED, 4)
    assert hist.dtype == np.int64
    np.testing.assert_array_equal(hist, HIST)


def test_predictions_on_void_pixels_do_not_count() -> None:
    other = PRED.copy()
    other[GT == 255] = 0
    np.testing.assert_array_equal(confusion(GT, other, 4), confusion(GT, PRED, 4))


def test_gt_outside_the_class_range_is_dropped_like_void() -> None:
    gt = np.array([0, 1, 7, -1])
    pred = np.array([0, 1, 1, 1])
    np.testing.assert_array_equal(confusion(gt, pred, 2), [[1, 0], [0, 1]])


def test_a_custom_ignore_index_inside_the_class_range_is_dropped() -> None:
    gt = np.array([0, 1, 2, 2])
    pred = np.array([0, 1, 0, 1])
    np.testing.assert_array_equal(confusion(gt, pred, 3, ignore_index=2), [[1, 0, 0], [0, 1, 0], [0, 0, 0]])


def test_scores_match_the_hand_computation() -> None:
    # diag = [2, 1, 1, 0]; gt totals (rows) = [3, 2, 1, 0]; pred totals (columns) = [3, 1, 1, 1].
    result = scores(HIST)
    assert result["pixel_accuracy"] == pytest.approx(4 / 6)
    # per-class accuracy 2/3, 1/2, 1/1 and NaN for class 3 (absent from gt, so left out).
    assert result["mean_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # IU: 2/(3+3-2), 1/(2+1-1), 1/(1+1-1), 0/(0+1-0): class 3 was predicted, so its 0 counts.
    assert result["mean_iu"] == pytest.approx((1 / 2 + 1 / 2 + 1 + 0) / 4)
    # frequencies 3/6, 2/6, 1/6, 0 weight the IUs.
    assert result["fw_iu"] == pytest.approx(3 / 6 * 1 / 2 + 2 / 6 * 1 / 2 + 1 / 6 * 1)


def test_a_class_absent_from_gt_and_prediction_is_nan_and_leaves_the_means_alone() -> None:
    five = confusion(GT, PRED, 5)
    iu = per_class_iu(five)
    assert math.isnan(iu[4])
    np.testing.assert_allclose(iu[:4], [1 / 2, 1 / 2, 1, 0])
    assert scores(five) == pytest.approx(scores(HIST))


def test_perfect_prediction_scores_one_everywhere() -> None:
    gt = np.array([[0, 1, 2], [2, 255, 1]])
    pred = np.where(gt == 255, 0, gt)
    assert scores(confusion(gt, pred, 4)) == pytest.approx(
        {"pixel_accuracy": 1.0, "mean_accuracy": 1.0, "mean_iu": 1.0, "fw_iu": 1.0}
    )


def test_an_empty_histogram_scores_nan_without_warnings() -> None:
    """fw IU is the exception: 0.0, the reference's empty sum over classes of nonzero frequency."""
    with np.errstate(all="raise"):
        result = scores(confusion(np.full(3, 255), np.zeros(3), 2))
    assert result.pop("fw_iu") == 0.0
    assert all(math.isnan(v) for v in result.values())


def test_the_report_of_an_empty_histogram_is_strict_json(tmp_path: Path) -> None:
    """Undefined scores are written as null: JSON has no NaN, and strict readers refuse it."""
    matrix = ConfusionMatrix(2)
    matrix.update(np.full(3, 255), np.zeros(3))
    write_report(tmp_path / "r.json", matrix, ("a", "b"), {})

    def refuse(constant: str) -> None:
        raise ValueError(constant)

    report = json.loads((tmp_path / "r.json").read_text(), parse_constant=refuse)
    assert set(report["metrics"].values()) == {None, 0.0} and report["per_class_iu"] == {"a": None, "b": None}


def test_uint8_label_maps_do_not_overflow() -> None:
    # 21 * 20 + 20 = 440 does not fit in uint8.
    gt = np.array([20, 20, 0], dtype=np.uint8)
    pred = np.array([20, 0, 20], dtype=np.uint8)
    hist = confusion(gt, pred, 21)
    assert (hist[20, 20], hist[20, 0], hist[0, 20], hist.sum()) == (1, 1, 1, 3)


def test_prediction_outside_the_classes_is_an_error() -> None:
    with pytest.raises(ValueError, match="predicted classes"):
        confusion(np.array([0, 1]), np.array([0, 2]), 2)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="differ"):
        confusion(np.zeros((2, 3)), np.zeros((3, 2)), 2)


def test_accumulating_images_equals_scoring_them_together() -> None:
    rng = np.random.default_rng(0)
    gts = [rng.integers(0, 6, size=(7, 9)) for _ in range(3)]
    preds = [rng.integers(0, 5, size=(7, 9)) for _ in range(3)]
    gts[1][2:4] = 255
    matrix = ConfusionMatrix(5)
    for gt, pred in zip(gts, preds, strict=True):
        matrix.update(gt, pred)
    together = confusion(np.stack(gts), np.stack(preds), 5)
    np.testing.assert_array_equal(matrix.hist, together)
    assert matrix.scores() == scores(together)
    np.testing.assert_array_equal(matrix.per_class_iu(), per_class_iu(together))
