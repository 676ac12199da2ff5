"""Median-frequency class weights, and the weighted loss they feed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fcn.checkpoint import read_checkpoint
from fcn.errors import FcnpipeError
from pipeline.training.balance import class_weights, median_frequency_weights
from pipeline.training.data import open_dataset
from pipeline.training.data.base import ImageArray, LabelArray, SegmentationDataset
from pipeline.training.data.synthetic import make_benchmark
from pipeline.training.recipes import load_recipe
from pipeline.training.train import StageArgs, criterion, initial_model, train_stage

X = 255  # no label


class Labels(SegmentationDataset):
    """Label maps given by hand (the images are never read)."""

    name = "by-hand"
    class_names = ("road", "sky", "pole", "sign")

    def __init__(self, labels: list[list[list[int]]]) -> None:
        self.labels = [np.array(label, dtype=np.int64) for label in labels]
        super().__init__(Path("."), "train", [str(i) for i in range(len(labels))])

    def load_image(self, key: str) -> ImageArray:
        raise AssertionError("class weights read labels only")

    def load_label(self, key: str) -> LabelArray:
        return self.labels[int(key)]


def test_median_frequency_weights_by_hand() -> None:
    dataset = Labels(
        [
            [[0, 0, 0, 0], [0, 0, 1, 1]],  # 8 labelled: road 6, sky 2
            [[0, 0, 2, 2], [0, 0, X, X]],  # 6 labelled: road 4, pole 2
            [[1, 1, 1, 1], [1, 1, 1, 2]],  # 8 labelled: sky 7, pole 1
        ]
    )
    # freq = pixels of the class / labelled pixels of the images that hold it:
    # road 10/14, sky 9/16, pole 3/14; "sign" never appears. Median of the three: sky's 9/16.
    freq = {"road": 10 / 14, "sky": 9 / 16, "pole": 3 / 14}
    expected = [(9 / 16) / freq["road"], 1.0, (9 / 16) / freq["pole"], 0.0]
    assert median_frequency_weights(dataset) == pytest.approx(expected)
    assert class_weights("none", dataset) is None


def test_weights_need_a_labelled_pixel_and_a_known_name() -> None:
    with pytest.raises(FcnpipeError, match="no labelled pixel"):
        median_frequency_weights(Labels([[[X, X]]]))
    with pytest.raises(FcnpipeError, match="choose one of: none, median-frequency"):
        class_weights("inverse", Labels([[[0, 1]]]))


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_the_weighted_loss_weighs_each_pixel_by_its_class(reduction: str) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=gen)
    target = torch.randint(0, 4, (2, 5, 6), generator=gen)
    target[0, 0, :3] = X
    weight = torch.tensor([0.5, 2.0, 3.0, 0.0])
    # Per pixel: -log softmax at its class, times its class's weight; ignored pixels count nothing.
    nll = -logits.log_softmax(1).gather(1, target.clamp(max=3)[:, None])[:, 0]
    labelled = target != X
    weighed = (nll * weight[target.clamp(max=3)])[labelled].sum()
    expected = weighed if reduction == "sum" else weighed / labelled.sum()
    got = criterion(logits, target, X, reduction, weight)
    torch.testing.assert_close(got, expected)


def test_a_stage_trained_with_median_frequency_weights_records_them(tmp_path: Path) -> None:
    # The per-pixel stand-in: this is about the option reaching the stage and its record.
    bench = f"synthetic-ortho:{make_benchmark(tmp_path / 'bench', scenes=3, size=48)}"
    model, card = initial_model("scratch", "pointwise", open_dataset(bench, "train"))
    recipe = load_recipe("modern").updated(crop=32, batch_size=2, class_weights="median-frequency")
    train_stage(model, card, recipe, StageArgs(dataset=bench, steps=2, eval_every=2), tmp_path / "run")
    assert read_checkpoint(tmp_path / "run" / "last.pt")["recipe"]["class_weights"] == "median-frequency"
    assert "class_weights: median-frequency" in (tmp_path / "run" / "stage.yaml").read_text()
