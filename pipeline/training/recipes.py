"""Training recipes: typed YAML data (configs/train-<name>.yaml) and the optimiser and schedule they build.

Two ship with fcnpipe. ``heavy`` is the FCN paper's reference: SGD with momentum 0.99, the loss
summed over the pixels of one whole image per step, biases at twice the learning rate without
weight decay, and a fixed rate per stage (1e-10 for FCN-32s, 1e-12 for FCN-16s, 1e-14 for FCN-8s;
the rates are that small because the loss is a sum over ~250,000 pixels, of Caffe's 0-255 input;
SIFT Flow's FCN-8s keeps 1e-12), for the reference's number of steps on each dataset. ``modern`` is the
usual recipe today: mean loss, SGD momentum 0.9 with a poly schedule, random crops with flips,
batches of 8, bf16 on a GPU.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator
from torch import nn
from torch.optim import SGD, AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR

from fcn.errors import FcnpipeError
from fcn.normalization import Normalization
from pipeline.settings import describe_errors, read_mapping

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
BUILTIN_RECIPES = ("heavy", "modern", "default", "demo")

T = TypeVar("T")

CLASSIFIER = "score"
"""The prefix of the score layers' names (``score_fr``, ``score_pool4``; the stand-in's ``score``),
at the top of the network or of one of its streams (a late fusion's ``color.score_fr``)."""


def is_classifier(name: str) -> bool:
    """Whether the parameter ``name`` belongs to a score layer (:data:`CLASSIFIER`)."""
    return any(part.startswith(CLASSIFIER) for part in name.split(".")[:2])


def per_stage(table: dict[str, T], arch: str, dataset: str) -> T | None:
    """``table``'s entry for ``DATASET/ARCH``, else for ``arch``, else for ``dataset`` (else None)."""
    for key in (f"{dataset}/{arch}", arch, dataset):
        if key in table:
            return table[key]
    return None


class Recipe(BaseModel):
    """How to train: optimiser, loss, schedule and the batches the network sees."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(1e-3, gt=0)
    stage_lr: dict[str, float] = Field(default_factory=dict)
    """Learning rate per architecture (``fcn8s``) or per training dataset and architecture
    (``siftflow/fcn8s``, which wins), overriding ``lr`` (the heavy recipe's staged rates)."""
    steps: dict[str, PositiveInt] = Field(default_factory=dict)
    """Steps per stage when a run gives neither a step count nor epochs: per training dataset
    (``sbd``) or per dataset and architecture (``sbd/fcn8s-atonce``, which wins)."""
    caffe_input: bool = False
    """The rates were set for the Caffe VGG16's input (0-255, no std): other input is warned about."""
    momentum: float = Field(0.9, ge=0, lt=1)
    """SGD momentum; AdamW keeps its default betas."""
    weight_decay: float = Field(5e-4, ge=0)
    bias_lr_mult: float = Field(1.0, gt=0)
    bias_decay: bool = True
    loss_reduction: Literal["sum", "mean"] = "mean"
    schedule: Literal["fixed", "poly"] = "poly"
    poly_power: float = Field(0.9, gt=0)
    batch_size: int = Field(8, ge=1)
    crop: int | None = Field(320, gt=0)
    """Side of the random square crops; ``None`` feeds whole images at their native size."""
    hflip: bool = True
    precision: Literal["fp32", "bf16"] = "fp32"
    """``bf16`` autocasts on CUDA only; other devices always train in fp32."""
    class_weights: Literal["none", "median-frequency"] = "none"
    """Weigh each class's pixels in the loss: ``median-frequency`` as SegNet on CamVid
    (:mod:`pipeline.training.balance`, computed from the training split)."""
    learn: Literal["all", "classifier"] = "all"
    """``classifier`` learns only the score layers (``score_fr``, and the skips' ``score_pool*``), the
    trunk frozen as initialised: the FCN paper's FCN-32s-fixed row (networks with batch
    normalisation are refused)."""
    loss_sampling: float = Field(1.0, gt=0, le=1)
    """Keep each cell of the stride-32 score map in the loss with this probability (the FCN paper's
    loss sampling; 1 keeps every pixel). Drawn from the training's random state, so a resumed
    stage draws what an uninterrupted one would."""
    adversarial: float = Field(0.0, ge=0)
    """lambda of the adversarial term (:mod:`pipeline.training.adversarial`); 0 trains without it."""
    discriminator_lr: float = Field(1e-4, gt=0)
    """Adam's learning rate for the discriminator when ``adversarial`` is above 0."""

    @model_validator(mode="after")
    def _whole_images_one_at_a_time(self) -> Recipe:
        if self.crop is None and self.batch_size != 1:
            raise ValueError("whole images (crop: null) differ in size, so batch_size must be 1")
        return self

    def for_arch(self, arch: str, dataset: str = "") -> float:
        """The learning rate of the stage that trains ``arch`` on the dataset named ``dataset``."""
        rate = per_stage(self.stage_lr, arch, dataset)
        return self.lr if rate is None else rate

    def steps_for(self, arch: str, dataset: str) -> int | None:
        """The steps of the stage that trains ``arch`` on ``dataset`` when none are asked for."""
        return per_stage(self.steps, arch, dataset)

    def updated(self, **changes: Any) -> Recipe:
        """A copy with some settings changed, validated like a file."""
        return validated({**self.model_dump(), **changes}, "the recipe changes")


def validated(data: dict[str, Any], source: str) -> Recipe:
    """Validate plain data into a recipe, or raise a sentence naming ``source`` and what is wrong."""
    try:
        return Recipe(**data)
    except ValidationError as exc:
        raise FcnpipeError(f"invalid training recipe in {source}: {describe_errors(exc)}.") from None


def recipe_path(path_or_name: str | Path) -> Path:
    """A built-in name (``heavy``, ``modern``, …) is configs/train-<name>.yaml; anything else a path."""
    if str(path_or_name) in BUILTIN_RECIPES:
        return CONFIGS / f"train-{path_or_name}.yaml"
    return Path(path_or_name).expanduser()


def load_recipe(path_or_name: str | Path) -> Recipe:
    """Read a recipe from YAML (never executed); a file without ``name`` is named after itself."""
    path = recipe_path(path_or_name)
    if not path.is_file():
        raise FcnpipeError(
            f"training recipe {path} does not exist; give a YAML file or one of: "
            f"{', '.join(BUILTIN_RECIPES)}."
        )
    data = read_mapping(path, "training recipe")
    data.setdefault("name", path.stem.removeprefix("train-"))
    return validated(data, str(path))


def warn_about_input(recipe: Recipe, normalization: Normalization) -> None:
    """Warn in one sentence when the recipe's rates assume Caffe's input but the model reads another.

    A summed loss makes the gradient scale with the input: one grey level is 1.0 of Caffe's input
    and about 0.017 of torchvision's (RGB, 0-1, divided by the std), so the same rate is another one.
    """
    step = sum(normalization.scale / s for s in normalization.std) / 3  # input per grey level
    if recipe.caffe_input and abs(step - 1.0) > 1e-6:
        warnings.warn(
            f"the {recipe.name} recipe's fixed rates are the reference's for the Caffe VGG16's input, "
            f"where one grey level is 1.0, but this model reads {step:.3g} per grey level (torchvision's "
            "VGG16: RGB, 0-1, divided by the std), so they mean another rate here; start from "
            "caffe-vgg16 for the reference's training.",
            UserWarning,
            stacklevel=2,
        )


def param_groups(model: nn.Module, recipe: Recipe, arch: str, dataset: str = "") -> list[dict[str, Any]]:
    """Weights at the stage's rate with decay; biases at ``bias_lr_mult`` times it, decayed or not.

    Parameters that do not learn (the fixed bilinear upsamplers) are left out, and with
    ``learn: classifier`` every parameter outside the score layers.
    """
    lr = recipe.for_arch(arch, dataset)
    weights: list[nn.Parameter] = []
    biases: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad and (recipe.learn == "all" or is_classifier(name)):
            (biases if name.rsplit(".", 1)[-1] == "bias" else weights).append(param)
    if not weights and not biases:
        raise FcnpipeError(
            f"{arch} has no score layers (named {CLASSIFIER}…) to learn alone: use learn: all."
        )
    groups = [
        {"params": weights, "lr": lr, "weight_decay": recipe.weight_decay},
        {
            "params": biases,
            "lr": lr * recipe.bias_lr_mult,
            "weight_decay": recipe.weight_decay if recipe.bias_decay else 0.0,
        },
    ]
    return [g for g in groups if g["params"]]


def freeze_trunk(model: nn.Module, arch: str) -> None:
    """Keep every parameter outside the score layers as it is (``learn: classifier``): no gradient.

    A network with batch normalisation is refused: its running statistics would still move.
    """
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise FcnpipeError(
            f"learn: classifier keeps the trunk as initialised, but {arch}'s batch normalisation "
            "would still update its statistics: use learn: all."
        )
    for name, param in model.named_parameters():
        if not is_classifier(name):
            param.requires_grad_(False)


def make_optimizer(model: nn.Module, recipe: Recipe, arch: str, dataset: str = "") -> Optimizer:
    """The recipe's optimiser over :func:`param_groups` (``dataset``: the training data's name).

    With ``learn: classifier`` the trunk is frozen first (:func:`freeze_trunk`), so its gradients
    are not even computed.
    """
    if recipe.learn == "classifier":
        freeze_trunk(model, arch)
    groups = param_groups(model, recipe, arch, dataset)
    if recipe.optimizer == "adamw":
        return AdamW(groups, lr=recipe.for_arch(arch, dataset))
    return SGD(groups, lr=recipe.for_arch(arch, dataset), momentum=recipe.momentum)


def make_scheduler(optimizer: Optimizer, recipe: Recipe, total_steps: int) -> LambdaLR:
    """Stepped once per training step: constant (``fixed``) or ``(1 - step / total) ** poly_power``."""
    if recipe.schedule == "fixed":
        return LambdaLR(optimizer, lambda step: 1.0)
    power = recipe.poly_power
    return LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total_steps) ** power)
