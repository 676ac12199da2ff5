"""Adversarial training of a segmenter (Luc, Couprie, Chintala & Verbeek, NIPS Workshop 2016).

A discriminator learns to tell ground-truth label maps from the segmenter's, each seen together
with its image; the segmenter learns to fool it while fitting the labels, with the paper's hybrid
loss ``cross-entropy + lambda * adversarial``. The discriminator exists only during training: a
stage's ``last.pt`` keeps it (and its optimiser) so that a resume continues exactly, and the
checkpoints the pipeline loads (``best.pt``, the card's weights) hold the segmenter alone.

Followed from the paper (arXiv:1611.08408):

- the "product" input: each of the C class maps multiplies each channel of the image, giving 3C
  channels, so the discriminator judges labels where they sit in the image. Ground truth enters
  one-hot, the segmenter's output as its softmax probabilities;
- the "large field of view" discriminator of the paper's Pascal VOC experiments: 3x3
  convolutions of 96, 128, 128 channels, a 2x2 max pool, 256, 256, a max pool, 512, then a 3x3
  convolution to one score per position, averaged into one logit per image; ReLU after every
  convolution but the last;
- the discriminator's loss is binary cross-entropy (ground truth 1, segmentation 0); the
  segmenter's adversarial term is the paper's "flipped" form ``-log a(x, s(x))``, which gives
  strong gradients while the discriminator is winning, rather than ``log(1 - a(x, s(x)))``;
- one discriminator update, then one segmenter update, per step.

Choices the paper leaves open, and why: pixels without a label (the dataset's ignore value) are
zeroed in both inputs, so that the discriminator cannot tell the two apart by them; the
discriminator trains with Adam at the recipe's ``discriminator_lr`` (1e-4 by default), whatever
the segmenter's optimiser, since its loss has the scale of one binary decision per image and not
the segmenter's. The adversarial term is a mean over the batch, so under the ``heavy`` recipe
(cross-entropy summed over pixels) lambda must be larger for the same balance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Adam

DISCRIMINATOR_CHANNELS = ((96, 128, 128), (256, 256), (512,))
"""Convolution widths of the large field-of-view discriminator, a 2x2 max pool between groups."""


class Discriminator(nn.Module):
    """One logit per image: above 0 for a ground-truth label map, below 0 for a segmentation."""

    def __init__(self, num_classes: int, image_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = image_channels * num_classes
        for group, widths in enumerate(DISCRIMINATOR_CHANNELS):
            if group:
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            for out in widths:
                layers += [nn.Conv2d(width, out, 3, padding=1), nn.ReLU(inplace=True)]
                width = out
        layers.append(nn.Conv2d(width, 1, 3, padding=1))
        self.features = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, class_maps: torch.Tensor) -> torch.Tensor:
        """Logits (N,) for images (N, 3, H, W) with class maps (N, C, H, W): one-hot or probabilities."""
        product = (image[:, :, None] * class_maps[:, None]).flatten(1, 2)  # channel i*C + c
        scores: torch.Tensor = self.features(product)
        return scores.mean((1, 2, 3))


def one_hot_labels(labels: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """Ground truth as class maps (N, C, H, W); all zeros where there is no label."""
    labelled = labels != ignore_index
    maps = F.one_hot(torch.where(labelled, labels, 0), num_classes).permute(0, 3, 1, 2).float()
    return maps * labelled[:, None]


@dataclass
class Adversary:
    """The discriminator, its optimiser and lambda; what it measured since the last validation."""

    discriminator: Discriminator
    optimizer: torch.optim.Optimizer
    weight: float
    """lambda: how much the adversarial term weighs against the cross-entropy."""
    num_classes: int
    ignore_index: int
    losses: list[float] = field(default_factory=list)
    correct: list[float] = field(default_factory=list)
    """Per step, the fraction of the batch's real and segmented maps the discriminator told apart."""

    @classmethod
    def create(
        cls,
        num_classes: int,
        ignore_index: int,
        weight: float,
        lr: float,
        device: torch.device,
        image_channels: int = 3,
    ) -> Adversary:
        """A fresh discriminator (PyTorch's default initialisation) with its Adam optimiser."""
        discriminator = Discriminator(num_classes, image_channels).to(device)
        return cls(discriminator, Adam(discriminator.parameters(), lr=lr), weight, num_classes, ignore_index)

    def masked(self, probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Probabilities zeroed where there is no label, as the ground truth's maps are."""
        return probabilities * (labels != self.ignore_index)[:, None]

    def update(self, image: torch.Tensor, probabilities: torch.Tensor, labels: torch.Tensor) -> None:
        """One discriminator step on the batch's ground truth against its (detached) segmentation."""
        real = one_hot_labels(labels, self.num_classes, self.ignore_index)
        fake = self.masked(probabilities.detach().float(), labels)
        self.discriminator.train()
        logits = self.discriminator(torch.cat([image, image]), torch.cat([real, fake]))
        target = torch.cat([torch.ones(len(image)), torch.zeros(len(image))]).to(logits.device)
        loss = F.binary_cross_entropy_with_logits(logits, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        self.losses.append(float(loss.detach()))
        self.correct.append(float(((logits.detach() > 0) == (target > 0.5)).float().mean()))

    def segmenter_term(
        self, image: torch.Tensor, probabilities: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """The term ``lambda * -log a(x, s(x))``: small when the discriminator is fooled."""
        self.discriminator.requires_grad_(False)  # its gradients here would be thrown away
        try:
            logits = self.discriminator(image, self.masked(probabilities.float(), labels))
        finally:
            self.discriminator.requires_grad_(True)
        fooled = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        return self.weight * fooled

    def take_scores(self) -> dict[str, float]:
        """Mean discriminator loss and accuracy since the last call (for metrics.csv), then forget them."""
        if not self.losses:
            return {}
        scores = {
            "discriminator_loss": sum(self.losses) / len(self.losses),
            "discriminator_accuracy": sum(self.correct) / len(self.correct),
        }
        self.losses, self.correct = [], []
        return scores

    def state(self) -> dict[str, Any]:
        """Everything a resume needs, as plain data a weights-only load accepts."""
        return {
            "state_dict": self.discriminator.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "losses": self.losses,
            "correct": self.correct,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """The inverse of :meth:`state`."""
        self.discriminator.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.losses = [float(v) for v in state["losses"]]
        self.correct = [float(v) for v in state["correct"]]
