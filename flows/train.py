"""Fine-tune FCNs the reference's way: FCN-32s, then FCN-16s from it, then FCN-8s from that.

Each stage is a task with its own run folder (``OUT/fcn32s``, ...): metrics.csv, best.pt (by
validation mean IU) and last.pt (everything a resume needs). ``--resume OUT/fcn16s/last.pt``
continues that stage exactly and then the stages after it.
"""

# No ``from __future__ import annotations``: a served flow is pickled by value, and its
# parameters' annotations must be types, not names of types (Prefect validates them).

import math
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import ValidationError
from rich.console import Console

from fcn import FcnpipeError
from flows.runtime import training_bar
from pipeline.settings import TrainSettings, describe_errors
from pipeline.tiling.engine import pick_device
from pipeline.training import default_model as default
from pipeline.training.data import open_dataset
from pipeline.training.downloads import download_base
from pipeline.training.downloads import progress_bar as download_progress
from pipeline.training.presets import fetch_missing, find_preset
from pipeline.training.recipes import Recipe, load_recipe, warn_about_input
from pipeline.training.stages import (
    PRESET_OPTIONS,
    chosen_options,
    metrics_table,
    resumable,
    stage_lengths,
    stages_for,
)
from pipeline.training.train import (
    StageArgs,
    StageResult,
    StepReport,
    initial_model,
    resume_stage,
    train_stage,
)


@contextmanager
def stage_progress(arch: str, args: StageArgs, run_dir: Path) -> Iterator[Callable[[StepReport], None]]:
    """The stage's progress bar, and its metrics table republished as an artifact after each validation.

    Prefect keeps every version of an artifact key, so the table in the UI grows as the stage runs.
    """
    with training_bar(arch, args.steps) as advance:

        def on_step(report: StepReport) -> None:
            advance(report)
            if report.step % args.eval_every == 0 or report.step == report.steps:
                create_markdown_artifact(
                    metrics_table(run_dir), key=f"{arch}-metrics", description=f"{arch} training"
                )

        yield on_step


@task(name="train-stage", cache_policy=NO_CACHE)
def train_stage_task(
    arch: str, init: str, recipe: Recipe, args: StageArgs, run_dir: Path, device: str
) -> tuple[StageResult, list[str]]:
    """Train one stage from ``init`` (ImageNet VGG16, scratch or the previous stage's best.pt).

    Returns the result and the warnings of the start (from scratch, layers left at random, a
    recipe's rates meant for other input), which the CLI prints: Prefect's own log is quiet in a
    terminal run.
    """
    dataset = open_dataset(args.dataset, args.train_split)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        model, card = initial_model(init, arch, dataset, seed=args.seed, download_base=download_base())
        warn_about_input(recipe, card.normalization)
    notes = list(dict.fromkeys(str(w.message) for w in caught))
    for note in notes:
        get_run_logger().warning(note)
    with stage_progress(arch, args, run_dir) as on_step:
        result = train_stage(model, card, recipe, args, run_dir, device=pick_device(device), on_step=on_step)
    return result, notes


@task(name="resume-stage", cache_policy=NO_CACHE)
def resume_stage_task(last: Path, arch: str, args: StageArgs, device: str) -> StageResult:
    """Continue a stage exactly from its last.pt (``arch`` and ``args`` as :func:`resumable` read them)."""
    with stage_progress(arch, args, last.parent) as on_step:
        return resume_stage(last.parent, device=pick_device(device), on_step=on_step)


@flow(name="train")
def train(
    settings: TrainSettings = TrainSettings(),
    out: Path | None = None,
    resume: Path | None = None,
    preset: str | None = None,
    data: Path | None = None,
) -> dict[str, Any]:
    """Train ARCH on DATASET (NAME:PATH, e.g. synthetic-ortho:data/synthetic or camvid:CamVid).

    FCN-16s and FCN-8s are trained in stages from FCN-32s unless --staged false; every other
    architecture (fcnpipe weights archs) in one stage. INIT is imagenet[:PATH] (the network's
    ImageNet classifier by net surgery, torchvision layout), caffe-vgg16[:PATH] (the Caffe VGG16,
    with the dataset's input as the reference feeds it), a checkpoint, or scratch (the networks
    whose papers train from scratch). --class-weights median-frequency weighs the loss as SegNet
    does; --adversarial LAMBDA adds Luc et al.'s adversarial term. Give the length per stage as
    --max-steps or --epochs (of --train-split), or leave it to the recipe (heavy: the reference's
    steps per dataset); the best checkpoint is chosen on --val-split of --val-dataset (default:
    DATASET). --preset NAME sets all of these as a model folder of the FCN reference release
    trains it (configs/presets.yaml, README), its data under --data DIR; options given win. OUT
    defaults to runs/train, or to the run that --resume continues.

    Args:
        settings: How to train (pipeline.settings.TrainSettings; each field is an option).
        out: The run's folder (one subfolder per stage); default: runs/train.
        resume: A stage's last.pt to continue exactly (then the stages after it).
        preset: A reference protocol, e.g. voc-fcn8s (README lists them).
        data: The folder a preset reads its datasets from.
    """
    device, seed, val_limit = settings.device, settings.seed, settings.val_limit
    max_steps = settings.max_steps
    options = chosen_options(preset, data, settings.model_dump(include=set(PRESET_OPTIONS)))
    epochs = settings.epochs
    if epochs is None:  # a preset's steps give way to --epochs as to --max-steps
        max_steps = options.get("max_steps")
    if preset is not None and data is not None:
        with download_progress(sys.stderr.isatty()) as progress:
            used = [spec for spec in (options["dataset"], options.get("val_dataset")) if spec]
            for line in fetch_missing(
                find_preset(preset), data, used, base=download_base(), progress=progress
            ):
                Console(stderr=True).print(line, highlight=False)
    chain = stages_for(options["arch"], settings.staged)
    resumed_arch, resumed_args, notes = None, None, []
    if resume is not None:
        resumed_arch, resumed_args = resumable(resume, chain)
        out = out or resume.parent.parent
        if resume.parent.resolve() != (out / resumed_arch).resolve():
            raise FcnpipeError(
                f"{resume} is not the {resumed_arch} stage of --out {out}; the stages after it are "
                f"written beside it, so pass --out {resume.parent.parent} (or leave --out out)."
            )
    out = out or Path("runs/train")
    train_size = len(open_dataset(options["dataset"], options["train_split"]))
    changes: dict[str, Any] = {"class_weights": settings.class_weights, "adversarial": settings.adversarial}
    changes |= {k: v for k, v in {"learn": settings.learn, "loss_sampling": settings.loss_sampling}.items()
                if v is not None}  # fmt: skip
    chosen = load_recipe(options["recipe"]).updated(**changes)
    lengths = stage_lengths(chain, chosen, options["dataset"], train_size, max_steps, epochs)
    every = options.get("eval_every") or max(1, math.ceil(train_size / chosen.batch_size))
    try:
        first = StageArgs(
            dataset=options["dataset"], steps=lengths[chain[0]], eval_every=every, seed=seed,
            val_limit=val_limit, train_split=options["train_split"], val_split=options["val_split"],
            val_dataset=options.get("val_dataset"),
        )  # fmt: skip
    except ValidationError as exc:
        raise FcnpipeError(f"invalid training settings: {describe_errors(exc)}.") from None
    args = {stage: first.model_copy(update={"steps": steps}) for stage, steps in lengths.items()}
    if resumed_arch is not None and resumed_args is not None:
        asked = args[resumed_arch].steps
        if resumed_args.steps != asked:
            notes.append(f"{resume} continues its stage as it was started, to step {resumed_args.steps}; "
                         f"the {asked} steps asked for apply to the stages after it.")  # fmt: skip
    results: dict[str, Any] = {}
    previous = options["init"]
    for stage in chain:
        run_dir = out / stage
        if resumed_arch is not None and chain.index(stage) < chain.index(resumed_arch):
            previous = str(run_dir / "best.pt")  # finished before the resumed stage
            continue
        if resume is not None and resumed_args is not None and stage == resumed_arch:
            result = resume_stage_task(resume, stage, resumed_args, device)
        else:
            result, started = train_stage_task(stage, previous, chosen, args[stage], run_dir, device)
            notes += [note for note in started if note not in notes]
        results[stage] = {"best": str(result.best), "mean_iu": result.best_mean_iu, **result.scores}
        previous = str(result.best)
    return {"out": str(out), "warnings": notes, "stages": results}


@flow(name="default-model")
def default_model(
    path: Path, steps: int = default.STEPS, device: str = "auto", keep_training_files: bool = False
) -> Path:
    """Train fcnpipe's default model once (pipeline.training.default_model) and keep it at ``path``.

    Only the model and its record (``.json``: recipe, steps, validation scores, seconds) stay: the
    benchmark and the run's checkpoints are deleted, unless ``keep_training_files`` keeps them in
    ``default-model/`` beside the model.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with ExitStack() as stack:
        work = path.parent / "default-model" if keep_training_files else Path(
            stack.enter_context(tempfile.TemporaryDirectory(dir=path.parent, prefix=".training-"))
        )  # fmt: skip
        args, recipe = default.default_training(work, steps)
        result, _ = train_stage_task(default.ARCH, "scratch", recipe, args, work / f"run-{steps}", device)
        seconds = time.perf_counter() - start
        return default.keep_default_model(result, path, recipe, seconds, str(pick_device(device)))
