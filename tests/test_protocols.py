"""The reference release's protocols: separate validation data, per-dataset input, the heavy recipe's
reference settings, presets, and fw IU of an all-void set.

Tests about plumbing train the per-pixel ``pointwise`` stand-in for a step or two on tiny folders
written here; none trains an FCN.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import scipy.io  # type: ignore[import-untyped]
import torch
from PIL import Image
from typer.testing import CliRunner

from fcn import (
    CAFFE_VGG16,
    TORCHVISION_IMAGENET,
    FcnpipeError,
    build_model,
    describe,
    load_checkpoint,
    save_checkpoint,
)
from fcn.normalization import CAFFE_NYUD_COLOR, CAFFE_NYUD_HHA, CAFFE_SIFTFLOW, Normalization
from fcnpipe.main import app
from pipeline.training.data import open_dataset
from pipeline.training.data.base import SegmentationDataset
from pipeline.training.data.files import SHIPPED_SPLITS
from pipeline.training.data.nyud import NYUD, NYUDHHA
from pipeline.training.data.siftflow import SiftFlow, SiftFlowGeo
from pipeline.training.data.synthetic import make_benchmark
from pipeline.training.data.voc import SBD, VOC
from pipeline.training.evaluation import evaluate
from pipeline.training.presets import load_presets
from pipeline.training.recipes import load_recipe
from pipeline.training.stages import chosen_options, stage_lengths
from pipeline.training.train import StageArgs, initial_model, train_stage

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
SIDE = 16  # px: every image here is 16 x 16

TINY = """\
name: tiny
optimizer: adamw
lr: 1.0e-3
weight_decay: 0.0
loss_reduction: mean
schedule: fixed
batch_size: 1
crop: null
hflip: false
precision: fp32
"""


def flow(*args: str, ok: bool = True) -> str:
    """Run the train flow through the CLI; its output on one line (exit 0, or 1 with one sentence)."""
    result = runner.invoke(app, ["run", str(ROOT / "flows" / "train.py"), *args], terminal_width=400)
    assert result.exit_code == (0 if ok else 1), result.output
    if not ok:
        assert "Traceback" not in result.output and result.output.count("error:") == 1, result.output
    return " ".join(result.output.split())


def write_jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


def write_sbd(root: Path, ids: list[str], cls: int) -> Path:
    """An SBD folder (train split only) whose every pixel is class ``cls``."""
    for seed, key in enumerate(ids):
        write_jpeg(root / "img" / f"{key}.jpg", seed)
        (root / "cls").mkdir(parents=True, exist_ok=True)
        segmentation = np.full((SIDE, SIDE), cls, dtype=np.uint8)
        scipy.io.savemat(root / "cls" / f"{key}.mat", {"GTcls": {"Segmentation": segmentation}})
    (root / "train.txt").write_text("\n".join(ids) + "\n")
    return root


def write_voc(root: Path, ids: list[str], cls: int) -> Path:
    """A VOC folder with images and labels (every pixel ``cls``) but no split lists of its own."""
    for seed, key in enumerate(ids):
        write_jpeg(root / "JPEGImages" / f"{key}.jpg", 100 + seed)
        (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((SIDE, SIDE), cls, dtype=np.uint8), mode="L").save(
            root / "SegmentationClass" / f"{key}.png"
        )
    return root


def seg11valid() -> list[str]:
    return (SHIPPED_SPLITS / "voc" / "seg11valid.txt").read_text().split()


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"synthetic-ortho:{make_benchmark(tmp_path_factory.mktemp('bench'), scenes=3, size=32)}"


# --- separate validation data --------------------------------------------------------------------


@pytest.mark.usefixtures("prefect_api")
def test_the_voc_preset_trains_on_sbd_and_scores_voc_seg11valid(recipe: Path, tmp_path: Path) -> None:
    """Plumbing (pointwise, one step): the metrics come from VOC's seg11valid, read from the shipped list.

    SBD is labelled class 0 everywhere and has no val split at all; VOC's images are labelled 15
    and its folder holds no seg11valid.txt: only the shipped list can find them.
    """
    data = tmp_path / "data"
    write_sbd(data / "sbd" / "benchmark_RELEASE" / "dataset", ["2008_000002", "2008_000003"], cls=0)
    voc = write_voc(data / "voc2012" / "VOCdevkit" / "VOC2012", seg11valid()[:2], cls=15)
    out = tmp_path / "run"
    flow("--preset", "voc-fcn32s", "--data", str(data), "--arch", "pointwise", "--init", "scratch",
         "--recipe", str(recipe), "--max-steps", "1", "--val-limit", "2", "--out", str(out))  # fmt: skip
    with (out / "pointwise" / "metrics.csv").open(newline="") as f:
        (row,) = list(csv.DictReader(f))
    model, card = load_checkpoint(out / "pointwise" / "best.pt")
    assert card.provenance["val_dataset"] == f"voc:{voc}" and card.provenance["val_split"] == "seg11valid"
    assert card.provenance["dataset"] == f"sbd:{data / 'sbd' / 'benchmark_RELEASE' / 'dataset'}"
    scored = evaluate(
        model, open_dataset(f"voc:{voc}", "seg11valid"), card.normalization, torch.device("cpu"), 2
    )
    assert {k: float(row[k]) for k in scored.scores()} == pytest.approx(scored.scores(), nan_ok=True)
    assert scored.hist.sum() == scored.hist[15].sum() == 2 * SIDE * SIDE  # VOC's labels, not SBD's


@pytest.mark.usefixtures("prefect_api")
def test_validation_data_with_other_classes_is_one_sentence(recipe: Path, bench: str, tmp_path: Path) -> None:
    sbd = write_sbd(tmp_path / "sbd", ["2008_000002"], cls=0)
    sentence = flow("--dataset", f"sbd:{sbd}", "--val-dataset", bench, "--arch", "pointwise", "--init",
                    "scratch", "--recipe", str(recipe), "--max-steps", "1", "--out", str(tmp_path / "run"),
                    ok=False)  # fmt: skip
    assert f"the validation data {bench} is labelled with other classes than the training data" in sentence
    assert "validate on data labelled with the same classes." in sentence


def test_seg11valid_is_the_papers_736_voc_ids() -> None:
    ids = seg11valid()
    assert len(ids) == len(set(ids)) == 736
    assert all(
        len(i) == 11 and i[4] == "_" and i[:4] in {"2007", "2008", "2009", "2010", "2011"} for i in ids
    )
    assert all(i[5:].isdigit() for i in ids) and ids == sorted(ids)


# --- per-dataset input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "expected"),
    [(VOC, CAFFE_VGG16), (SBD, CAFFE_VGG16), (SiftFlow, CAFFE_SIFTFLOW), (SiftFlowGeo, CAFFE_SIFTFLOW),
     (NYUD, CAFFE_NYUD_COLOR), (NYUDHHA, CAFFE_NYUD_HHA)],
)  # fmt: skip
def test_each_dataset_has_the_reference_layers_input_and_the_checkpoint_keeps_it(
    dataset: type[SegmentationDataset], expected: Normalization, tmp_path: Path
) -> None:
    assert dataset.reference_input == expected
    model = build_model("pointwise", 3)
    save_checkpoint(
        tmp_path / "m.pt", model, describe(model, "pointwise", normalization=expected, memory=False)
    )
    assert load_checkpoint(tmp_path / "m.pt")[1].normalization == expected


def test_the_reference_inputs_by_hand() -> None:
    """SIFT Flow and NYUD colour are flipped to BGR before their means; HHA goes in as stored."""
    pixel = torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1, 1)
    by_hand = {
        CAFFE_SIFTFLOW: [30 - 114.578, 20 - 115.294, 10 - 108.353],
        CAFFE_NYUD_COLOR: [30 - 116.190, 20 - 97.203, 10 - 92.318],
        CAFFE_NYUD_HHA: [10 - 132.431, 20 - 94.076, 30 - 118.477],
    }
    for normalization, expected in by_hand.items():
        assert normalization.apply(pixel).flatten().tolist() == pytest.approx(expected)


@pytest.mark.slow
def test_a_caffe_vgg16_start_on_hha_takes_the_hha_input(vgg16_file: Path, tmp_path: Path) -> None:
    root = tmp_path / "nyud"
    (root / "data" / "hha").mkdir(parents=True)
    (root / "segmentation").mkdir()
    (root / "train.txt").write_text("5001\n")
    model, card = initial_model(
        f"caffe-vgg16:{vgg16_file}", "fcn32s", open_dataset(f"nyud-hha:{root}", "train")
    )
    assert card.normalization == CAFFE_NYUD_HHA
    save_checkpoint(tmp_path / "hha.pt", model, card)
    assert load_checkpoint(tmp_path / "hha.pt")[1].normalization == CAFFE_NYUD_HHA


# --- the heavy recipe ----------------------------------------------------------------------------


@pytest.mark.usefixtures("prefect_api")
def test_heavy_warns_on_torchvision_input_and_not_on_caffe_input(bench: str, tmp_path: Path) -> None:
    """Plumbing (pointwise, one whole-image step each): the warning is about the input, not the network."""
    caffe = build_model("pointwise", 6)
    save_checkpoint(
        tmp_path / "caffe.pt", caffe, describe(caffe, "pointwise", normalization=CAFFE_VGG16, memory=False)
    )
    common = ["--dataset", bench, "--arch", "pointwise", "--recipe", "heavy", "--max-steps", "1"]
    torchvision = flow(*common, "--init", "scratch", "--out", str(tmp_path / "tv"))
    assert (
        "warning: the heavy recipe's fixed rates are the reference's for the Caffe VGG16's input"
        in torchvision
    )
    assert "this model reads 0.0174 per grey level" in torchvision
    assert "warning" not in flow(
        *common, "--init", str(tmp_path / "caffe.pt"), "--out", str(tmp_path / "caffe")
    )
    assert load_checkpoint(tmp_path / "tv" / "pointwise" / "best.pt")[1].normalization == TORCHVISION_IMAGENET


def test_heavy_runs_the_references_steps_and_rates_per_dataset() -> None:
    heavy = load_recipe("heavy")
    stages = ["fcn32s", "fcn16s", "fcn8s"]
    assert stage_lengths(stages, heavy, "sbd:x", 8498, None, None) == dict.fromkeys(stages, 100_000)
    assert stage_lengths(["fcn8s-atonce"], heavy, "sbd:x", 8498, None, None) == {"fcn8s-atonce": 300_000}
    assert set(stage_lengths(stages, heavy, "pascal-context:x", 4998, None, None).values()) == {400_000}
    assert set(stage_lengths(["fcn32s"], heavy, "nyud-hha:x", 795, None, None).values()) == {100_000}
    assert stage_lengths(stages, heavy, "sbd:x", 8498, 7, None) == dict.fromkeys(stages, 7)  # asked for: wins
    for siftflow in ("siftflow", "siftflow-geo", "siftflow-both"):  # one head or the two-headed net
        assert [heavy.for_arch(a, siftflow) for a in stages] == [1e-10, 1e-12, 1e-12]
        assert set(stage_lengths(stages, heavy, f"{siftflow}:x", 2486, None, None).values()) == {100_000}
    assert [heavy.for_arch(a, "sbd") for a in stages] == [1e-10, 1e-12, 1e-14]
    # nyud-fcn32s-color-d: the fcn32s rate; nyud-fcn32s-color-hha/solver.prototxt: 1e-12; both 50 x 2000 steps
    assert heavy.for_arch("fcn32s-color-d", "nyud-color-d") == 1e-10
    assert heavy.for_arch("fcn32s-color-hha", "nyud-color-hha") == 1e-12
    for nyud in ("nyud-color-d", "nyud-color-hha"):
        assert stage_lengths(["fcn32s"], heavy, f"{nyud}:x", 795, None, None) == {"fcn32s": 100_000}
    with pytest.raises(FcnpipeError, match="has no steps of its own for fcn8s on camvid"):
        stage_lengths(["fcn8s"], heavy, "camvid:x", 367, None, None)


# --- presets -------------------------------------------------------------------------------------


def test_a_preset_sets_what_it_says_and_options_given_win(tmp_path: Path) -> None:
    options = chosen_options("siftflow-fcn8s", tmp_path, {})
    assert options == {
        "arch": "fcn8s", "init": "caffe-vgg16", "recipe": "heavy", "dataset": f"siftflow-both:{tmp_path}",
        "train_split": "trainval", "val_dataset": None, "val_split": "test", "eval_every": 2000,
        "max_steps": None,  # the heavy recipe's steps for the dataset
    }  # fmt: skip
    assert chosen_options("loveda-fcn8s", tmp_path, {"max_steps": 5})["max_steps"] == 5
    assert chosen_options("loveda-fcn8s", tmp_path, {})["max_steps"] == 8000
    given = {
        "arch": "fcn16s",
        "val_split": "val",
        "eval_every": 10,
        "dataset": "siftflow-geo:/g",
        "init": None,
    }
    assert chosen_options("siftflow-fcn8s", tmp_path, given) == options | {
        "arch": "fcn16s",
        "val_split": "val",
        "eval_every": 10,
        "dataset": "siftflow-geo:/g",
    }
    # The late fusion starts from two trained FCN-32s, which only the user can name.
    with pytest.raises(
        FcnpipeError, match=r"starts from models trained first: pass --init streams:COLOUR\.pt,HHA\.pt"
    ):
        chosen_options("nyud-fcn32s-color-hha", tmp_path, {})
    fusion = chosen_options("nyud-fcn32s-color-hha", tmp_path, {"init": "streams:c.pt,h.pt"})
    assert (fusion["arch"], fusion["dataset"], fusion["recipe"]) == (
        "fcn32s-color-hha",
        f"nyud-color-hha:{tmp_path}",
        "heavy",
    )
    # The VOC pairing needs both folders: from --data, or each by hand.
    with pytest.raises(FcnpipeError, match=r"voc-fcn8s preset reads its data from --data DIR.*--val-dataset"):
        chosen_options("voc-fcn8s", None, {"dataset": "sbd:/s"})
    assert chosen_options("voc-fcn8s", None, {"dataset": "sbd:/s", "val_dataset": "voc:/v"})["val_split"] == (
        "seg11valid"
    )
    with pytest.raises(FcnpipeError, match="unknown preset 'voc'; choose one of: voc-fcn32s, "):
        chosen_options("voc", tmp_path, {})
    assert set(load_presets()) >= {"voc-fcn32s", "voc-fcn8s", "siftflow-fcn16s", "nyud-fcn32s-hha"}


def test_fw_iu_of_an_all_void_validation_set_is_zero(bench: str, tmp_path: Path) -> None:
    """Plumbing (pointwise, one step): the metrics row of a validation with no labelled pixel."""
    root = Path(bench.partition(":")[2])
    with rasterio.open(root / "labels" / "val_0.tif", "r+") as dst:
        saved = dst.read()
        dst.write(np.full_like(saved, 255))
    try:
        dataset = open_dataset(bench, "train")
        model, card = initial_model("scratch", "pointwise", dataset)
        args = StageArgs(dataset=bench, steps=1, eval_every=1)
        result = train_stage(
            model, card, load_recipe("heavy").updated(caffe_input=False), args, tmp_path / "run"
        )
    finally:
        with rasterio.open(root / "labels" / "val_0.tif", "r+") as dst:
            dst.write(saved)
    assert result.scores["fw_iu"] == 0.0 and math.isnan(result.scores["mean_iu"])
