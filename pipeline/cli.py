"""The ``fcnpipe`` command line: parse, call library code, print one sentence on failure."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fcn import FcnpipeError, available_models, save_checkpoint

app = typer.Typer(
    name="fcnpipe",
    help="Segment gigapixel images and orthophotos with fully convolutional networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
weights_app = typer.Typer(help="Make and describe model checkpoints.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a user-caused error into one printed sentence and exit status 1."""
    try:
        yield
    except FcnpipeError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None


@weights_app.command("init")
def weights_init(
    arch: Annotated[str, typer.Option(help=f"One of: {', '.join(available_models())}.")],
    classes: Annotated[int, typer.Option(help="Number of classes the model predicts.", min=1)],
    out_path: Annotated[Path, typer.Option("--out", help="Checkpoint file to write.")],
    vgg16: Annotated[
        Path | None,
        typer.Option(help="ImageNet VGG16 state dict (default: the torch hub cache)."),
    ] = None,
    caffe: Annotated[
        bool, typer.Option(help="The VGG16 file is the Caffe conversion (BGR, 0-255, mean).")
    ] = False,
    random: Annotated[
        bool, typer.Option("--random", help="Random weights instead of VGG16 (for tests).")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed for --random.")] = 0,
    class_names: Annotated[
        str | None, typer.Option(help="Comma-separated class names, one per class.")
    ] = None,
) -> None:
    """Write a starting checkpoint: an FCN initialised from ImageNet VGG16, or random."""
    from pipeline.weights import starting_model

    with user_errors():
        names = [n.strip() for n in class_names.split(",")] if class_names else None
        model, card = starting_model(
            arch,
            classes,
            vgg16=vgg16,
            caffe=caffe,
            random_seed=seed if random else None,
            class_names=names,
        )
        save_checkpoint(out_path, model, card)
    rf = card.receptive_field
    out.print(
        f"wrote {out_path}: {card.arch}, {card.num_classes} classes, init {card.provenance['init']}, "
        f"receptive field {rf.lo}..+{rf.hi} px, halo {card.halo} px"
    )
