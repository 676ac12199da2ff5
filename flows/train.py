"""Fine-tune FCNs the reference's way: FCN-32s, then FCN-16s from it, then FCN-8s from that.

Each stage is a task with its own run folder (``OUT/fcn32s``, ...): metrics.csv, best.pt (by
validation mean IU) and last.pt (everything a resume needs). ``--resume OUT/fcn16s/last.pt``
continues that stage exactly and then the stages after it.
"""

# No ``from __future__ import annotations``: a served flow is pickled by value, and its
# parameters' annotations must be types, not names of types (Prefect validates them).

import json
import math
import shutil
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

from fcn import FcnpipeError, ModelCard
from fcn.checkpoint import read_checkpoint
from flows.runtime import training_bar
from pipeline.cli.yamlfile import describe_errors
from pipeline.tiling.engine import pick_device
from pipeline.training.data import open_dataset
from pipeline.training.recipes import Recipe, load_recipe
from pipeline.training.train import (
    STAGES,
    StageArgs,
    StageResult,
    StepReport,
    initial_model,
    resume_stage,
    train_stage,
)


def stages_for(arch: str, staged: bool) -> list[str]:
    """The chain of stages that ends in ``arch``."""
    if arch in STAGES and staged:
        return list(STAGES[: STAGES.index(arch) + 1])
    return [arch]


def metrics_table(run_dir: Path) -> str:
    """A stage's metrics.csv as a markdown table."""
    rows = [line.split(",") for line in (run_dir / "metrics.csv").read_text().splitlines() if line]
    if not rows:
        return ""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]])


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

    Returns the result and the warnings of the start (from scratch, layers left at random), which
    the CLI prints: Prefect's own log is quiet in a terminal run.
    """
    dataset = open_dataset(args.dataset, args.train_split)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        model, card = initial_model(init, arch, dataset, seed=args.seed)
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
    dataset: str,
    out: Path | None = None,
    arch: str = "fcn8s",
    init: str = "imagenet",
    recipe: str = "modern",
    class_weights: str = "none",
    adversarial: float = 0.0,
    max_steps: int | None = None,
    epochs: int | None = None,
    eval_every: int | None = None,
    staged: bool = True,
    resume: Path | None = None,
    device: str = "auto",
    seed: int = 0,
    val_limit: int | None = None,
    train_split: str = "train",
    val_split: str = "val",
) -> dict[str, Any]:
    """Train ARCH on DATASET (NAME:PATH, e.g. synthetic-ortho:data/synthetic or camvid:CamVid).

    FCN-16s and FCN-8s are trained in stages from FCN-32s unless --staged false; every other
    architecture (fcnpipe weights archs) in one stage. INIT is imagenet[:PATH] (the network's
    ImageNet classifier by net surgery, torchvision layout), caffe-vgg16:PATH, a checkpoint, or
    scratch (the networks whose papers train from scratch). --class-weights median-frequency
    weighs the loss as SegNet does; --adversarial LAMBDA adds Luc et al.'s adversarial term.
    Give the length per stage as --max-steps or --epochs (of --train-split); the best checkpoint
    is chosen on --val-split. OUT defaults to runs/train, or to the run that --resume continues.

    Args:
        dataset: The training data as NAME:PATH (fcnpipe data info NAME:PATH checks it).
        out: The run's folder (one subfolder per stage); default: runs/train.
        arch: The network (fcnpipe weights archs lists them).
        init: imagenet[:PATH], caffe-vgg16:PATH, a checkpoint to start from, or scratch.
        recipe: modern, heavy (the reference's), default, or a recipe YAML file.
        class_weights: none, or median-frequency (weights from the training split, as SegNet).
        adversarial: LAMBDA of Luc et al.'s adversarial term (0: none).
        max_steps: Steps per stage.
        epochs: Epochs of the training split per stage (instead of --max-steps).
        eval_every: Steps between validations; default: the recipe's.
        staged: Train FCN-16s and FCN-8s in stages from FCN-32s, as the paper.
        resume: A stage's last.pt to continue exactly (then the stages after it).
        device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.
        seed: Random seed of initialisation, sampling and augmentation.
        val_limit: Score only this many validation images.
        train_split: The split to train on.
        val_split: The split that chooses the best checkpoint.
    """
    chain = stages_for(arch, staged)
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
    train_size = len(open_dataset(dataset, train_split))
    chosen = load_recipe(recipe).updated(class_weights=class_weights, adversarial=adversarial)
    batch = chosen.batch_size
    if (max_steps is None) == (epochs is None):
        raise FcnpipeError("give the length of each stage with either --max-steps or --epochs.")
    steps = max_steps if max_steps is not None else epochs * math.ceil(train_size / batch)  # type: ignore[operator]
    try:
        args = StageArgs(
            dataset=dataset, steps=steps, eval_every=eval_every or max(1, math.ceil(train_size / batch)),
            seed=seed, val_limit=val_limit, train_split=train_split, val_split=val_split,
        )  # fmt: skip
    except ValidationError as exc:
        raise FcnpipeError(f"invalid training settings: {describe_errors(exc)}.") from None
    if resumed_args is not None and resumed_args.steps != args.steps:
        notes.append(f"{resume} continues its stage as it was started, to step {resumed_args.steps}; "
                     f"the {args.steps} steps asked for apply to the stages after it.")  # fmt: skip
    results: dict[str, Any] = {}
    previous = init
    for stage in chain:
        run_dir = out / stage
        if resumed_arch is not None and chain.index(stage) < chain.index(resumed_arch):
            previous = str(run_dir / "best.pt")  # finished before the resumed stage
            continue
        if resume is not None and resumed_args is not None and stage == resumed_arch:
            result = resume_stage_task(resume, stage, resumed_args, device)
        else:
            result, started = train_stage_task(stage, previous, chosen, args, run_dir, device)
            notes += [note for note in started if note not in notes]
        results[stage] = {"best": str(result.best), "mean_iu": result.best_mean_iu, **result.scores}
        previous = str(result.best)
    return {"out": str(out), "warnings": notes, "stages": results}


def resumable(checkpoint: Path, chain: list[str]) -> tuple[str, StageArgs]:
    """The architecture and arguments of the stage ``checkpoint`` (a last.pt) resumes, checked."""
    payload = read_checkpoint(checkpoint)
    arch = ModelCard.from_dict(payload["card"]).arch
    if "optimizer" not in payload:
        raise FcnpipeError(
            f"{checkpoint} holds weights only (a best.pt); resume from the stage's last.pt, which also "
            "holds the optimiser, schedule and random state."
        )
    if arch not in chain:
        raise FcnpipeError(f"{checkpoint} is a {arch} stage, which is not part of {' -> '.join(chain)}.")
    return arch, StageArgs(**payload["args"])


DEFAULT_SCENES, DEFAULT_SIZE, DEFAULT_STEPS = 12, 256, 300


@flow(name="default-model")
def default_model(
    path: Path, steps: int = DEFAULT_STEPS, device: str = "auto", keep_training_files: bool = False
) -> Path:
    """Train fcnpipe's default model once: FCN-8s from scratch on the synthetic orthophoto benchmark.

    The benchmark is generated (deterministic, no download) and the best checkpoint by validation
    mean IU is copied to ``path``, with a small record beside it (``.json``: recipe, steps,
    validation scores, seconds). Only those two files stay: the benchmark and the run's
    checkpoints (1.6 GB of last.pt with its optimiser state, 0.5 GB of best.pt) are deleted,
    unless ``keep_training_files`` keeps them in ``default-model/`` beside the model.
    """
    from pipeline.training.data.synthetic import make_benchmark

    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with ExitStack() as stack:
        if keep_training_files:
            work = path.parent / "default-model"
        else:
            work = Path(
                stack.enter_context(tempfile.TemporaryDirectory(dir=path.parent, prefix=".training-"))
            )
        data = make_benchmark(work / "synthetic-ortho", scenes=DEFAULT_SCENES, size=DEFAULT_SIZE, seed=0)
        args = StageArgs(dataset=f"synthetic-ortho:{data}", steps=steps, eval_every=max(1, steps // 4))
        recipe = load_recipe("default")
        result, _ = train_stage_task("fcn8s", "scratch", recipe, args, work / f"run-{steps}", device)
        record = {
            "arch": "fcn8s",
            "init": "scratch",
            "dataset": f"synthetic-ortho, {DEFAULT_SCENES} scenes of {DEFAULT_SIZE}² px, seed 0",
            "steps": steps,
            "recipe": recipe.model_dump(mode="json"),
            "best_mean_iu": result.best_mean_iu,
            "validation": result.scores,
            "seconds": round(time.perf_counter() - start, 1),
            "device": str(pick_device(device)),
        }
        shutil.copyfile(result.best, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
    path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return path
