from __future__ import annotations

import csv
import math
import warnings
from itertools import islice, pairwise
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from torch import nn

from fcn import (
    CAFFE_VGG16,
    TORCHVISION_IMAGENET,
    FcnpipeError,
    build_model,
    describe,
    load_checkpoint,
    save_checkpoint,
)
from fcn.checkpoint import read_checkpoint
from pipeline.training.data import SegmentationDataset, open_dataset
from pipeline.training.data.base import ImageArray, LabelArray
from pipeline.training.data.synthetic import make_benchmark
from pipeline.training.evaluation import evaluate
from pipeline.training.recipes import Recipe, load_recipe, make_optimizer, param_groups
from pipeline.training.train import (
    METRIC_FIELDS,
    STAGES,
    StageArgs,
    StepReport,
    batches,
    criterion,
    initial_model,
    resume_stage,
    rng_state,
    sampled_cells,
    set_rng_state,
    train_stage,
)

# Small enough for a CPU: 32 px crops from 64 px scenes.
TINY = {"crop": 32, "batch_size": 2, "precision": "fp32"}


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The synthetic benchmark at its smallest: one 64 px scene per split."""
    return f"synthetic-ortho:{make_benchmark(tmp_path_factory.mktemp('bench'), scenes=3, size=64)}"


@pytest.fixture(scope="module")
def train_split(bench: str) -> SegmentationDataset:
    return open_dataset(bench, "train")


def modern(**changes: object) -> Recipe:
    return load_recipe("modern").updated(**(TINY | changes))


def rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def pointwise(dataset: SegmentationDataset, seed: int = 0) -> tuple[nn.Module, object]:
    """The per-pixel stand-in with zero scores, like an FCN's: it starts out predicting class 0."""
    model, card = initial_model("scratch", "pointwise", dataset, seed=seed)
    with torch.no_grad():
        model.score.weight.zero_()
        model.score.bias.zero_()
    return model, card


class Tiny(nn.Module):
    """A small convolutional net with dropout, so that resuming must restore torch's random state."""

    in_channels, total_stride, margin = 3, 1, 0  # what fcn.registry.SegmentationNet reads

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.score = nn.Conv2d(8, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(self.drop(torch.relu(self.conv(x))))


class InMemory(SegmentationDataset):
    """Images of assorted sizes whose label is a function of the red channel, 255 where it is 250+."""

    name = "in-memory"
    class_names = ("a", "b", "c", "d", "e")

    def __init__(self, sizes: list[tuple[int, int]]) -> None:
        rng = np.random.default_rng(0)
        self.images = {
            str(i): rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for i, (h, w) in enumerate(sizes)
        }
        super().__init__(Path("."), "train", list(self.images))

    def load_image(self, key: str) -> ImageArray:
        return self.images[key]

    def load_label(self, key: str) -> LabelArray:
        red = self.images[key][..., 0].astype(np.int64)
        return np.where(red >= 250, 255, red % 5)


# --- recipes -------------------------------------------------------------------------------------


def test_shipped_recipes_load() -> None:
    heavy, modern_recipe = load_recipe("heavy"), load_recipe("modern")
    assert [heavy.for_arch(a) for a in STAGES] == [1e-10, 1e-12, 1e-14]
    assert heavy.for_arch("fcn8s-atonce") == 1e-10
    assert (heavy.loss_reduction, heavy.momentum, heavy.batch_size, heavy.crop) == ("sum", 0.99, 1, None)
    assert (heavy.bias_lr_mult, heavy.bias_decay, heavy.weight_decay) == (2.0, False, 5e-4)
    assert (modern_recipe.loss_reduction, modern_recipe.schedule, modern_recipe.crop) == ("mean", "poly", 320)
    assert (modern_recipe.batch_size, modern_recipe.hflip, modern_recipe.precision) == (8, True, "bf16")
    assert load_recipe(Path("configs/train-heavy.yaml")) == heavy


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("name: x\nlearning_rate: 0.1\n", "learning_rate"),
        ("lr: -1\n", "lr"),
        ("crop: null\nbatch_size: 8\n", "batch_size must be 1"),
        ("- lr\n", "mapping"),
        ("lr: [1\n", "not valid YAML"),
    ],
)
def test_bad_recipe_files_are_refused(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "train-bad.yaml"
    path.write_text(text)
    with pytest.raises(FcnpipeError, match=match):
        load_recipe(path)


def test_recipe_names_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "train-mine.yaml").write_text("lr: 0.5\n")
    assert load_recipe(tmp_path / "train-mine.yaml").name == "mine"
    with pytest.raises(FcnpipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(FcnpipeError, match="batch_size"):
        load_recipe("heavy").updated(batch_size=4)


# --- optimiser and loss --------------------------------------------------------------------------


def test_param_groups_follow_the_recipe() -> None:
    model = build_model("fcn8s", 3)
    learnable = {id(p) for p in model.parameters() if p.requires_grad}
    upsamplers = {id(p) for n, p in model.named_parameters() if n.startswith("upscore")}
    assert upsamplers and not upsamplers & learnable

    weights, biases = param_groups(model, load_recipe("heavy"), "fcn8s")
    assert (weights["lr"], weights["weight_decay"]) == (1e-14, 5e-4)
    assert (biases["lr"], biases["weight_decay"]) == (2e-14, 0.0)
    grouped = [id(p) for p in weights["params"] + biases["params"]]
    assert sorted(grouped) == sorted(learnable)
    assert all(p.ndim == 1 for p in biases["params"]) and all(p.ndim == 4 for p in weights["params"])

    weights, biases = param_groups(model, load_recipe("modern").updated(bias_decay=True), "fcn8s")
    assert weights["lr"] == biases["lr"] == 1e-3
    assert weights["weight_decay"] == biases["weight_decay"] == 1e-4


def test_learning_the_classifier_alone_optimises_only_the_score_layers() -> None:
    fixed = load_recipe("heavy").updated(learn="classifier")
    for arch, scores in [("fcn32s", {"score_fr"}), ("fcn8s", {"score_fr", "score_pool4", "score_pool3"})]:
        model = build_model(arch, 3)
        learned = {id(p) for g in param_groups(model, fixed, arch) for p in g["params"]}
        expected = {id(p) for n, p in model.named_parameters() if n.split(".")[0] in scores}
        assert learned == expected, arch
        assert len(learned) == 2 * len(scores)  # a weight and a bias each
    with pytest.raises(FcnpipeError, match="has no score layers"):
        param_groups(nn.Sequential(nn.Conv2d(3, 2, 1)), fixed, "plain")
    model = build_model("fcn32s", 3)
    optimizer = make_optimizer(model, fixed, "fcn32s")
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {"score_fr.weight", "score_fr.bias"}  # the trunk computes no gradient
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 2
    with pytest.raises(FcnpipeError, match="batch normalisation would still update"):
        make_optimizer(build_model("segnet-basic", 3), fixed, "segnet-basic")


def test_loss_sampling_ignores_whole_cells_at_the_rate_asked() -> None:
    labels = torch.ones(8, 320, 330, dtype=torch.long)
    torch.manual_seed(0)
    kept = sampled_cells(labels, 0.25, 255)
    cells = kept[:, :320, :320].reshape(8, 10, 32, 10, 32).permute(0, 1, 3, 2, 4).reshape(800, -1)
    assert all(len(set(cell.tolist())) == 1 for cell in cells)  # a cell is kept or ignored whole
    assert set(kept.unique().tolist()) == {1, 255}
    share = float((cells[:, 0] == 1).float().mean())
    assert 0.2 < share < 0.3, share  # 800 draws at 0.25: 5 standard deviations either side
    edge = kept[:, :, 320:].reshape(8, 10, 32 * 10)  # the partial cells past the last whole one
    assert torch.equal(edge.amin(2), edge.amax(2))


def test_loss_sampling_changes_training_and_resumes_exactly(bench: str, tmp_path: Path) -> None:
    sampling = modern(lr=0.05, loss_sampling=0.5)
    plain = run_tiny(bench, tmp_path / "plain")
    whole = run_tiny(bench, tmp_path / "whole", sampling)
    run_tiny(bench, tmp_path / "parts", sampling, until=3)
    resumed = run_tiny(bench, tmp_path / "parts", sampling, resume=True)
    pairs = zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    pairs = zip(whole.state_dict().values(), plain.state_dict().values(), strict=True)
    assert not all(torch.equal(a, b) for a, b in pairs)


def test_criterion_sum_is_mean_times_labelled_pixels() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 7, generator=gen)
    target = torch.randint(0, 4, (2, 5, 7), generator=gen)
    target[0, :2] = 255
    labelled = int((target != 255).sum())
    total, mean = criterion(logits, target, 255, "sum"), criterion(logits, target, 255, "mean")
    assert torch.allclose(total, mean * labelled)
    expected = (
        -torch.log_softmax(logits, 1).gather(1, target.clamp(max=3)[:, None])[:, 0][target != 255].sum()
    )
    assert torch.allclose(total, expected)
    # What the network says on ignored pixels does not matter.
    changed = logits.clone()
    changed[0, :, :2] = 100.0
    assert torch.equal(criterion(changed, target, 255, "sum"), total)
    assert criterion(logits, torch.full_like(target, 255), 255, "mean").item() == 0.0


# --- batches -------------------------------------------------------------------------------------


def test_batches_depend_only_on_seed_and_step() -> None:
    dataset, recipe = InMemory([(40, 50), (20, 70), (64, 64)]), modern(batch_size=2)
    fill = TORCHVISION_IMAGENET.zero_input()
    whole = list(islice(batches(dataset, recipe, seed=3, fill=fill), 6))
    later = list(islice(batches(dataset, recipe, seed=3, fill=fill, start=4), 2))
    for (x, y), (x2, y2) in zip(whole[4:], later, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    other = next(batches(dataset, recipe, seed=4, fill=fill))
    assert not torch.equal(other[0], whole[0][0])


def test_crops_keep_labels_aligned_and_pad_with_ignore() -> None:
    dataset, recipe = InMemory([(40, 50), (20, 70), (24, 24)]), modern(batch_size=3)
    fill = TORCHVISION_IMAGENET.zero_input()
    assert TORCHVISION_IMAGENET.apply(torch.tensor(fill).view(1, 3, 1, 1)).abs().max() < 1e-6
    padded = 0
    for images, labels in islice(batches(dataset, recipe, seed=0, fill=fill), 8):
        assert images.shape == (3, 3, 32, 32) and labels.shape == (3, 32, 32)
        red, kept = images[:, 0], labels != 255
        assert torch.equal(labels[kept], red[kept].long() % 5)
        pad = ~kept & (red < 250)
        assert torch.equal(images.permute(0, 2, 3, 1)[pad], torch.tensor(fill).expand(int(pad.sum()), 3))
        padded += int(pad.sum())
    assert padded > 0


def test_whole_images_are_flipped_sometimes() -> None:
    dataset = InMemory([(9, 13)])  # one image: every step is a new epoch with its own draws
    recipe = load_recipe("heavy").updated(hflip=True)
    image = torch.from_numpy(dataset[0][0]).permute(2, 0, 1).float()
    seen = set()
    for images, _ in islice(batches(dataset, recipe, seed=0, fill=(0.0, 0.0, 0.0)), 8):
        assert images.shape == (1, 3, 9, 13)
        if torch.equal(images[0], image):
            seen.add("plain")
        if torch.equal(images[0], image.flip(-1)):
            seen.add("flipped")
    assert seen == {"plain", "flipped"}


# --- training ------------------------------------------------------------------------------------


def test_training_lowers_the_loss_and_raises_mean_iu(
    bench: str, train_split: SegmentationDataset, tmp_path: Path
) -> None:
    """The whole loop on the per-pixel stand-in: batches, normalisation, loss, optimiser, scoring, files."""
    model, card = pointwise(train_split)
    val = open_dataset(bench, "val")
    before = evaluate(model, val, card.normalization, torch.device("cpu"))
    assert set(np.flatnonzero(before.hist.sum(0))) == {0}  # zero scores: class 0 everywhere
    recipe = modern(optimizer="adamw", lr=0.01, batch_size=4)
    args = StageArgs(dataset=bench, steps=40, eval_every=10)
    rng = torch.get_rng_state()
    heard: list[StepReport] = []
    result = train_stage(model, card, recipe, args, tmp_path / "run", on_step=heard.append)

    assert torch.equal(torch.get_rng_state(), rng)  # the caller's random state is left alone
    history = rows(tmp_path / "run")
    assert tuple(history[0]) == METRIC_FIELDS and [int(r["step"]) for r in history] == [10, 20, 30, 40]
    losses = [float(r["train_loss"]) for r in history]
    assert losses[-1] < losses[0] < math.log(6)  # zero scores start at log(classes)
    assert result.best_mean_iu > before.scores()["mean_iu"] + 0.01
    # The progress callback hears every step once, in order, with the best mean IU once validated.
    assert [h.step for h in heard] == list(range(1, 41)) and {h.steps for h in heard} == {40}
    assert [h.best_mean_iu is None for h in heard] == [True] * 9 + [False] * 31
    assert heard[-1].best_mean_iu == result.best_mean_iu
    assert all(math.isfinite(h.loss) for h in heard)
    assert all(a.seconds < b.seconds for a, b in pairwise(heard))

    _, best_card = load_checkpoint(result.best)
    assert best_card.class_names == train_split.class_names
    assert best_card.palette == tuple(train_split.palette)
    assert best_card.provenance["dataset"] == bench and best_card.provenance["recipe"] == "modern"
    assert best_card.provenance["init"] == "random(seed=0)"
    last = read_checkpoint(result.last)
    assert last["step"] == 40 and last["recipe"] == recipe.model_dump() and last["args"] == args.model_dump()


def run_tiny(bench: str, run_dir: Path, recipe: Recipe | None = None, **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    model = Tiny(6)
    card = describe(model, "tiny")
    recipe = recipe or modern(lr=0.05)
    train_stage(model, card, recipe, StageArgs(dataset=bench, steps=6, eval_every=2), run_dir, **kwargs)
    return model


def test_resume_is_exact(bench: str, tmp_path: Path) -> None:
    """Paused mid-way (and a metrics row written after the pause's checkpoint), then resumed."""
    whole = run_tiny(bench, tmp_path / "whole")
    run_tiny(bench, tmp_path / "parts", until=3)
    with (tmp_path / "parts" / "metrics.csv").open("a") as f:
        f.write("4,1,1,1,1,1,1,1\n")
    torch.manual_seed(123)  # a different start: everything must come from last.pt
    resumed = run_tiny(bench, tmp_path / "parts", resume=True)
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    ours, theirs = (
        read_checkpoint(tmp_path / "whole" / "last.pt"),
        read_checkpoint(tmp_path / "parts" / "last.pt"),
    )
    for index, state in ours["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], theirs["optimizer"]["state"][index]["momentum_buffer"])
    assert ours["scheduler"] == theirs["scheduler"]
    drop = [{k: v for k, v in r.items() if k != "seconds"} for r in rows(tmp_path / "whole")]
    assert drop == [{k: v for k, v in r.items() if k != "seconds"} for r in rows(tmp_path / "parts")]


def test_resume_from_last_pt_alone(bench: str, train_split: SegmentationDataset, tmp_path: Path) -> None:
    args, recipe = StageArgs(dataset=bench, steps=5, eval_every=2), modern()
    whole = train_stage(*pointwise(train_split), recipe, args, tmp_path / "whole")
    train_stage(*pointwise(train_split), recipe, args, tmp_path / "parts", until=3)
    resumed = resume_stage(tmp_path / "parts")
    assert resumed.step == 5 and resumed.scores == whole.scores
    a, b = read_checkpoint(whole.last)["state_dict"], read_checkpoint(resumed.last)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_runs_are_not_overwritten_or_resumed_differently(
    bench: str, train_split: SegmentationDataset, tmp_path: Path
) -> None:
    args, recipe = StageArgs(dataset=bench, steps=2, eval_every=2), modern()
    train_stage(*pointwise(train_split), recipe, args, tmp_path, until=1)
    with pytest.raises(FcnpipeError, match="already holds"):
        train_stage(*pointwise(train_split), recipe, args, tmp_path)
    with pytest.raises(FcnpipeError, match="resume continues"):
        train_stage(*pointwise(train_split), recipe.updated(lr=1.0), args, tmp_path, resume=True)


def test_an_empty_validation_split_is_refused(tmp_path: Path) -> None:
    two = f"synthetic-ortho:{make_benchmark(tmp_path / 'two', scenes=2, size=32)}"  # both in train
    model, card = pointwise(open_dataset(two, "train"))
    with pytest.raises(FcnpipeError, match=r"val split of .* is empty"):
        train_stage(model, card, modern(), StageArgs(dataset=two, steps=1, eval_every=1), tmp_path / "run")


def test_best_pt_is_kept_when_validation_has_no_labelled_pixel(tmp_path: Path) -> None:
    """Mean IU is NaN then; the stage still leaves a best.pt for the next stage to start from."""
    root = make_benchmark(tmp_path / "bench", scenes=3, size=32)
    with rasterio.open(root / "labels" / "val_0.tif", "r+") as dst:
        dst.write(np.full((1, 32, 32), 255, dtype=np.uint8))  # 255: the labels' nodata, void
    data = f"synthetic-ortho:{root}"
    model, card = pointwise(open_dataset(data, "train"))
    result = train_stage(
        model, card, modern(), StageArgs(dataset=data, steps=2, eval_every=1), tmp_path / "run"
    )
    assert math.isnan(result.scores["mean_iu"]) and result.best.is_file()


def test_a_rng_state_saved_on_the_cpu_resumes_on_a_gpu() -> None:
    """Only the CPU's state exists then; it is restored, and the missing GPU state is no error."""
    state = rng_state(torch.device("cpu"))
    expected = torch.rand(3)
    set_rng_state(state, torch.device("cuda"))  # touches no GPU: there is no GPU state to set
    assert torch.equal(torch.rand(3), expected)


# --- starting points -----------------------------------------------------------------------------


def test_caffe_vgg16_without_a_path_is_only_its_own_file_in_the_hub_cache(
    train_split: SegmentationDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never torchvision's VGG16 there: reading it with Caffe's normalisation would be wrong."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth").touch()
    with pytest.raises(FcnpipeError, match=r"weights fetch vgg16 --caffe.*caffe-vgg16:PATH"):
        initial_model("caffe-vgg16", "fcn32s", train_split)


def test_a_checkpoint_for_other_classes_is_refused(train_split: SegmentationDataset, tmp_path: Path) -> None:
    other = build_model("pointwise", 3)
    save_checkpoint(tmp_path / "three.pt", other, describe(other, "pointwise"))
    with pytest.raises(FcnpipeError, match="3 classes, but 6"):
        initial_model(str(tmp_path / "three.pt"), "pointwise", train_split)


@pytest.mark.slow  # ~15-35 s: builds several full networks
def test_from_scratch_warns_only_where_the_paper_started_from_imagenet(
    train_split: SegmentationDataset,
) -> None:
    with pytest.warns(UserWarning, match="assume an ImageNet start"):
        initial_model("scratch", "fcn32s-googlenet", train_split)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the Tiramisu's paper trains it from scratch: nothing to warn
        initial_model("scratch", "fcdensenet56", train_split)


@pytest.mark.slow  # ~65 s: three stages
def test_staged_chain_32s_16s_8s(bench: str, train_split: SegmentationDataset, tmp_path: Path) -> None:
    """Each stage a step on one 32 px crop; SGD without momentum keeps the checkpoints at model size."""
    recipe = modern(batch_size=1, momentum=0.0)
    args = StageArgs(dataset=bench, steps=1, eval_every=1)
    with pytest.warns(UserWarning, match="ImageNet"):
        model, card = initial_model("scratch", "fcn32s", train_split)
    parent = None
    for arch in STAGES:
        if parent is not None:
            trained = model.state_dict()  # what the parent's best.pt holds: one step, one evaluation
            model, card = initial_model(str(parent), arch, train_split)
            assert card.arch == arch and card.provenance["init"] == str(parent)
            shared = {k for k in model.state_dict() if k in trained}
            assert shared >= {"features.0.weight", "fc6.weight", "score_fr.weight", "score_fr.bias"}
            assert all(torch.equal(model.state_dict()[k], trained[k]) for k in shared)
            new = [p for n, p in model.named_parameters() if n not in shared and p.requires_grad]
            assert new and all(torch.count_nonzero(p) == 0 for p in new)  # the new skip scores start at zero
        result = train_stage(model, card, recipe, args, tmp_path / arch)
        saved = torch.load(result.best, mmap=True, weights_only=True)["card"]
        assert saved["arch"] == arch and saved["provenance"]["steps"] == 1
        assert tuple(saved["class_names"]) == train_split.class_names
        result.last.unlink()  # half a gigabyte each: keep pytest's retained temp folders small
        parent = result.best
    load_checkpoint(parent, arch="fcn8s")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vgg16", "caffe-vgg16"])
def test_start_from_imagenet_vgg16(
    kind: str, vgg16_file: Path, vgg16_state: dict, train_split: SegmentationDataset
) -> None:
    model, card = initial_model(f"{kind}:{vgg16_file}", "fcn32s", train_split)
    assert torch.equal(model.state_dict()["features.0.weight"], vgg16_state["features.0.weight"])
    assert card.normalization == (CAFFE_VGG16 if kind == "caffe-vgg16" else TORCHVISION_IMAGENET)
    assert card.palette == tuple(train_split.palette) and card.provenance["init"].startswith(kind)


@pytest.mark.slow
def test_fcn32s_fits_its_training_crops(bench: str, train_split: SegmentationDataset, tmp_path: Path) -> None:
    """The real network trains: from random weights the loss on its crops falls well below log(6).

    Whole-scene validation scores need ImageNet weights or far more steps than a CPU test can take;
    the stand-in test above checks that validation scores rise.
    """
    with pytest.warns(UserWarning, match="ImageNet"):
        model, card = initial_model("scratch", "fcn32s", train_split)
    recipe = modern(optimizer="adamw", lr=1e-4)
    train_stage(model, card, recipe, StageArgs(dataset=bench, steps=16, eval_every=8), tmp_path)
    losses = [float(r["train_loss"]) for r in rows(tmp_path)]
    assert losses[-1] < 0.75 * losses[0] < math.log(6)


@pytest.mark.slow
def test_fcn32s_resumes_exactly(bench: str, train_split: SegmentationDataset, tmp_path: Path) -> None:
    """With the real network's dropout: two steps in one go, or one, a pause, and one more."""
    recipe, args = modern(batch_size=1), StageArgs(dataset=bench, steps=2, eval_every=2)
    for run, until in (("whole", None), ("parts", 1)):
        with pytest.warns(UserWarning, match="ImageNet"):
            model, card = initial_model("scratch", "fcn32s", train_split)
        train_stage(model, card, recipe, args, tmp_path / run, until=until)
    resume_stage(tmp_path / "parts")
    a = read_checkpoint(tmp_path / "whole" / "last.pt")["state_dict"]
    b = read_checkpoint(tmp_path / "parts" / "last.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
