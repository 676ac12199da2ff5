"""Training recipes: typed YAML data (configs/train-<name>.yaml) and the optimiser and schedule they build.

Two ship with fcnpipe. ``heavy`` is the FCN paper's reference: SGD with momentum 0.99, the loss
summed over the pixels of one whole image per step, biases at twice the learning rate without
weight decay, and a fixed rate per stage (1e-10 for FCN-32s, 1e-12 for FCN-16s, 1e-14 for FCN-8s;
the rates are that small because the loss is a sum over ~250,000 pixels). ``modern`` is the
usual recipe today: mean loss, SGD momentum 0.9 with a poly schedule, random crops with flips,
batches of 8, bf16 on a GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn
from torch.optim import SGD, AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR

from fcn.errors import FcnpipeError
from pipeline.cli.yamlfile import describe_errors, read_mapping

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
BUILTIN_RECIPES = ("heavy", "modern", "default")


class Recipe(BaseModel):
    """How to train: optimiser, loss, schedule and the batches the network sees."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(1e-3, gt=0)
    stage_lr: dict[str, float] = Field(default_factory=dict)
    """Learning rate per architecture, overriding ``lr`` (the heavy recipe's staged rates)."""
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
    adversarial: float = Field(0.0, ge=0)
    """lambda of the adversarial term (:mod:`pipeline.training.adversarial`); 0 trains without it."""
    discriminator_lr: float = Field(1e-4, gt=0)
    """Adam's learning rate for the discriminator when ``adversarial`` is above 0."""

    @model_validator(mode="after")
    def _whole_images_one_at_a_time(self) -> Recipe:
        if self.crop is None and self.batch_size != 1:
            raise ValueError("whole images (crop: null) differ in size, so batch_size must be 1")
        return self

    def for_arch(self, arch: str) -> float:
        """The learning rate of the stage that trains ``arch``."""
        return self.stage_lr.get(arch, self.lr)

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
    """``heavy`` and ``modern`` name the shipped configs/train-<name>.yaml; anything else is a path."""
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


def param_groups(model: nn.Module, recipe: Recipe, arch: str) -> list[dict[str, Any]]:
    """Weights at the stage's rate with decay; biases at ``bias_lr_mult`` times it, decayed or not.

    Parameters that do not learn (the fixed bilinear upsamplers) are left out.
    """
    lr = recipe.for_arch(arch)
    weights: list[nn.Parameter] = []
    biases: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (biases if name.rsplit(".", 1)[-1] == "bias" else weights).append(param)
    groups = [
        {"params": weights, "lr": lr, "weight_decay": recipe.weight_decay},
        {
            "params": biases,
            "lr": lr * recipe.bias_lr_mult,
            "weight_decay": recipe.weight_decay if recipe.bias_decay else 0.0,
        },
    ]
    return [g for g in groups if g["params"]]


def make_optimizer(model: nn.Module, recipe: Recipe, arch: str) -> Optimizer:
    """The recipe's optimiser over :func:`param_groups`."""
    groups = param_groups(model, recipe, arch)
    if recipe.optimizer == "adamw":
        return AdamW(groups, lr=recipe.for_arch(arch))
    return SGD(groups, lr=recipe.for_arch(arch), momentum=recipe.momentum)


def make_scheduler(optimizer: Optimizer, recipe: Recipe, total_steps: int) -> LambdaLR:
    """Stepped once per training step: constant (``fixed``) or ``(1 - step / total) ** poly_power``."""
    if recipe.schedule == "fixed":
        return LambdaLR(optimizer, lambda step: 1.0)
    power = recipe.poly_power
    return LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total_steps) ** power)
