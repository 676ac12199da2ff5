"""Adversarial training (Luc et al. 2016): the discriminator's input, the hybrid loss, the checkpoints.

The segmenter is a small convolutional net (the per-pixel stand-in gives the discriminator too
little to judge); the discriminator is the real one.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from fcn import describe, load_checkpoint
from fcn.checkpoint import read_checkpoint
from pipeline.training.adversarial import Adversary, Discriminator, one_hot_labels
from pipeline.training.data import open_dataset
from pipeline.training.data.synthetic import make_benchmark
from pipeline.training.recipes import load_recipe
from pipeline.training.train import StageArgs, initial_model, train_stage

X = 255


class Small(nn.Module):
    """Two 3x3 convolutions: enough structure for an adversary to push on."""

    in_channels, total_stride, margin = 3, 1, 0

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, num_classes, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return out


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"synthetic-ortho:{make_benchmark(tmp_path_factory.mktemp('bench'), scenes=3, size=64)}"


def test_the_product_input_multiplies_every_image_channel_by_every_class_map() -> None:
    torch.manual_seed(0)
    disc = Discriminator(num_classes=4)
    image, maps = torch.randn(2, 3, 12, 10), torch.rand(2, 4, 12, 10)
    seen: list[torch.Tensor] = []
    disc.features[0].register_forward_hook(lambda module, args, out: seen.append(args[0]))
    logit = disc(image, maps)
    assert logit.shape == (2,)
    product = seen[0]
    assert product.shape == (2, 3 * 4, 12, 10)
    for i in range(3):
        for c in range(4):
            assert torch.equal(product[:, i * 4 + c], image[:, i] * maps[:, c])


def test_ground_truth_is_one_hot_and_blank_where_unlabelled() -> None:
    labels = torch.tensor([[[0, 2], [X, 1]]])
    maps = one_hot_labels(labels, 3, X)
    assert maps.shape == (1, 3, 2, 2)
    assert maps[0, :, 0, 0].tolist() == [1, 0, 0] and maps[0, :, 0, 1].tolist() == [0, 0, 1]
    assert maps[0, :, 1, 0].tolist() == [0, 0, 0]  # no label: nothing to tell apart by


def test_the_segmenter_s_term_reaches_the_segmenter_only() -> None:
    torch.manual_seed(0)
    adversary = Adversary.create(4, X, weight=0.5, lr=1e-4, device=torch.device("cpu"))
    segmenter = Small(4)
    image, labels = torch.randn(2, 3, 16, 16), torch.randint(0, 4, (2, 16, 16))
    term = adversary.segmenter_term(image, segmenter(image).softmax(1), labels)
    term.backward()  # type: ignore[no-untyped-call]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in segmenter.parameters())
    assert all(p.grad is None for p in adversary.discriminator.parameters())
    assert all(p.requires_grad for p in adversary.discriminator.parameters())


def rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def run(bench: str, run_dir: Path, adversarial: float, **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    model = Small(6)
    recipe = load_recipe("modern").updated(
        crop=32, batch_size=2, optimizer="adamw", lr=1e-2, adversarial=adversarial, discriminator_lr=1e-3
    )
    args = StageArgs(dataset=bench, steps=8, eval_every=4)
    train_stage(model, describe(model, "small"), recipe, args, run_dir, **kwargs)
    return model


def test_a_few_adversarial_steps_move_both_losses_and_log_the_discriminator(
    bench: str, tmp_path: Path
) -> None:
    plain = run(bench, tmp_path / "plain", adversarial=0.0)
    hybrid = run(bench, tmp_path / "hybrid", adversarial=1.0)
    history = rows(tmp_path / "hybrid")
    assert [int(r["step"]) for r in history] == [4, 8]
    d_losses = [float(r["discriminator_loss"]) for r in history]
    accuracy = [float(r["discriminator_accuracy"]) for r in history]
    losses = [float(r["train_loss"]) for r in history]
    assert all(0 <= a <= 1 for a in accuracy) and all(math.isfinite(x) for x in d_losses + losses)
    assert d_losses[0] != d_losses[1] and losses[0] != losses[1]  # both losses move
    assert all(r["discriminator_loss"] == "" for r in rows(tmp_path / "plain"))
    # The same start and batches: only the adversarial term makes the segmenters differ.
    assert any(
        not torch.equal(a, b)
        for a, b in zip(plain.state_dict().values(), hybrid.state_dict().values(), strict=True)
    )

    # The checkpoints the pipeline loads hold the segmenter alone; last.pt keeps the discriminator.
    best = read_checkpoint(tmp_path / "hybrid" / "best.pt")
    assert set(best["state_dict"]) == set(hybrid.state_dict())
    assert "adversary" not in best
    last = read_checkpoint(tmp_path / "hybrid" / "last.pt")
    assert set(last["adversary"]["state_dict"]) == set(Discriminator(6).state_dict())
    assert last["recipe"]["adversarial"] == 1.0


def test_an_adversarial_run_resumes_exactly(bench: str, tmp_path: Path) -> None:
    whole = run(bench, tmp_path / "whole", adversarial=1.0)
    run(bench, tmp_path / "parts", adversarial=1.0, until=6)
    torch.manual_seed(123)
    resumed = run(bench, tmp_path / "parts", adversarial=1.0, resume=True)
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    ours, theirs = (read_checkpoint(tmp_path / d / "last.pt")["adversary"] for d in ("whole", "parts"))
    for name, tensor in ours["state_dict"].items():
        assert torch.equal(tensor, theirs["state_dict"][name]), name
    assert rows(tmp_path / "whole") == [
        r | {"seconds": w["seconds"]}
        for r, w in zip(rows(tmp_path / "parts"), rows(tmp_path / "whole"), strict=True)
    ]


def test_a_registered_network_trained_adversarially_loads_without_its_discriminator(
    bench: str, tmp_path: Path
) -> None:
    # The per-pixel stand-in: this is about what the checkpoint holds, not about learning.
    dataset = open_dataset(bench, "train")
    model, card = initial_model("scratch", "pointwise", dataset)
    recipe = load_recipe("modern").updated(crop=32, batch_size=2, adversarial=0.5)
    train_stage(model, card, recipe, StageArgs(dataset=bench, steps=2, eval_every=2), tmp_path)
    loaded, loaded_card = load_checkpoint(tmp_path / "best.pt")
    assert loaded_card.arch == "pointwise"
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
