"""Checkpoints carry what inference needs, round-trip exactly, and refuse anything else clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fcn import CAFFE_VGG16, TORCHVISION_IMAGENET, FcnpipeError, build_model, describe
from fcn.checkpoint import load_checkpoint, meta_tensors, read_checkpoint, save_checkpoint
from fcn.registry import architectures
from fcn.surgery import load_vgg16_state_dict
from fcnpipe.main import app
from tests.conftest import randomize

runner = CliRunner()


class Payload:
    """Not plain data: a weights-only load must refuse to rebuild it."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("this ran while loading",))


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    model = randomize(build_model("fcn16s", 3), seed=7)
    card = describe(
        model,
        "fcn16s",
        class_names=["ground", "roof", "water"],
        palette=[(1, 2, 3), (4, 5, 6), (7, 8, 9)],
        normalization=CAFFE_VGG16,
        provenance={"init": "test", "dataset": "none", "steps": 12},
    )
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, model, card)
    return path, model


def test_round_trip_keeps_weights_outputs_and_card(saved: tuple[Path, torch.nn.Module]) -> None:
    path, model = saved
    loaded, card = load_checkpoint(path)
    assert not loaded.training
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    x = torch.randn(1, 3, 37, 41)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert card.arch == "fcn16s" and card.num_classes == 3
    assert card.class_names == ("ground", "roof", "water")
    assert card.palette == ((1, 2, 3), (4, 5, 6), (7, 8, 9))
    assert card.normalization == CAFFE_VGG16
    assert card.provenance == {"init": "test", "dataset": "none", "steps": 12}
    assert card.halo >= card.receptive_field.radius and card.halo % card.total_stride == 0


def test_checkpoint_is_plain_data_readable_weights_only(
    saved: tuple[Path, torch.nn.Module],
) -> None:
    raw = torch.load(saved[0], weights_only=True)
    assert raw["card"]["halo"] == load_checkpoint(saved[0])[1].halo


def test_wrong_architecture_or_class_count_is_refused(saved: tuple[Path, torch.nn.Module]) -> None:
    with pytest.raises(FcnpipeError, match="fcn16s checkpoint, not fcn8s"):
        load_checkpoint(saved[0], arch="fcn8s")
    with pytest.raises(FcnpipeError, match="3 classes, but 21"):
        load_checkpoint(saved[0], num_classes=21)


def test_weights_that_do_not_fit_the_card_are_refused(
    saved: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    payload = read_checkpoint(saved[0])
    payload["card"]["arch"] = "fcn8s"  # 16s weights under an 8s label
    path = tmp_path / "lying.pt"
    torch.save(payload, path)
    with pytest.raises(FcnpipeError, match="do not fit a fcn8s"):
        load_checkpoint(path)


def test_corrupt_truncated_foreign_and_code_files_get_clear_errors(
    saved: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(saved[0].read_bytes()[:4096])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    code = tmp_path / "code.pt"
    torch.save({"format": "fcnpipe-checkpoint", "card": Payload()}, code)
    cases = {
        truncated: "corrupt or truncated",
        garbage: "corrupt or truncated",
        foreign: "not an fcnpipe checkpoint",
        code: "refuses to run",
        tmp_path / "missing.pt": "does not exist",
    }
    for path, message in cases.items():
        with pytest.raises(FcnpipeError, match=message):
            load_checkpoint(path)


def test_vgg16_weights_load_from_a_file_or_the_hub_cache(
    vgg16_file: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    state = load_vgg16_state_dict(vgg16_file)
    assert state["classifier.0.weight"].shape == (4096, 25088)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FcnpipeError, match="no ImageNet VGG16 weights"):
        load_vgg16_state_dict()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / vgg16_file.name).symlink_to(vgg16_file)
    cached = load_vgg16_state_dict()
    assert torch.equal(cached["features.0.weight"], state["features.0.weight"])


@pytest.mark.slow  # ~35 s: builds a full VGG16 FCN
def test_cli_weights_init_from_vgg16_records_the_normalisation(
    vgg16_file: Path, vgg16_state: dict, tmp_path: Path
) -> None:
    for caffe, norm in ((False, TORCHVISION_IMAGENET), (True, CAFFE_VGG16)):
        out = tmp_path / f"init-{caffe}.pt"
        args = ["weights", "init", "--arch", "fcn32s", "--classes", "4", "--vgg16", str(vgg16_file)]
        result = runner.invoke(app, [*args, "--out", str(out), *(["--caffe"] if caffe else [])])
        assert result.exit_code == 0, result.output
        model, card = load_checkpoint(out)
        assert card.normalization == norm
        assert card.provenance["init"].startswith("caffe-vgg16" if caffe else "vgg16")
        assert torch.equal(model.fc6.weight.flatten(1), vgg16_state["classifier.0.weight"])  # type: ignore[union-attr, operator]


@pytest.mark.slow  # ~40 s: builds full FCNs twice
def test_cli_weights_init_random_is_seeded_and_names_classes(tmp_path: Path) -> None:
    paths = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.pt"
        args = ["weights", "init", "--arch", "fcn8s", "--classes", "2", "--random", "--seed", "5"]
        result = runner.invoke(app, [*args, "--class-names", "tree,road", "--out", str(out)])
        assert result.exit_code == 0, result.output
        paths.append(out)
    (m1, card), (m2, _) = load_checkpoint(paths[0]), load_checkpoint(paths[1])
    assert card.class_names == ("tree", "road")
    assert torch.equal(m1.fc6.weight, m2.fc6.weight)  # type: ignore[union-attr, arg-type]


def test_cli_weights_init_errors_are_one_sentence(tmp_path: Path) -> None:
    out = str(tmp_path / "x.pt")
    cases = [
        (["--arch", "fcn4s", "--classes", "2", "--random"], "unknown architecture"),
        (
            ["--arch", "fcn8s", "--classes", "2", "--vgg16", str(tmp_path / "nope.pth")],
            "no ImageNet",
        ),
        (
            ["--arch", "fcn8s", "--classes", "2", "--random", "--class-names", "a"],
            "2 classes but 1",
        ),
        (["--arch", "pointwise", "--classes", "2"], "pointwise has no ImageNet start"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["weights", "init", *args, "--out", out])
        assert result.exit_code == 1
        assert message in result.output and "Traceback" not in result.output
    assert not Path(out).exists()


def test_a_file_is_hashed_again_when_it_changes(tmp_path: Path) -> None:
    import hashlib
    import os

    from pipeline.outputs.mosaic import file_sha256

    path = tmp_path / "weights.pt"
    path.write_bytes(b"first")
    assert file_sha256(path) == hashlib.sha256(b"first").hexdigest()
    path.write_bytes(b"second!")
    os.utime(path, ns=(1, 1))  # even with an old timestamp, the size changed
    assert file_sha256(path) == hashlib.sha256(b"second!").hexdigest()


def test_a_digest_is_kept_between_runs_until_the_file_is_written_again(tmp_path: Path) -> None:
    """The digest is read from fcnpipe's home while the file is unchanged; any write, even one that
    keeps the size and sets the modification time back, makes it hashed again (its change time moved)."""
    import hashlib
    import json
    import os
    import time

    from pipeline.home import home
    from pipeline.outputs.mosaic import file_sha256, hashed_file

    path = tmp_path / "weights.pt"
    path.write_bytes(b"first")
    assert file_sha256(path) == hashlib.sha256(b"first").hexdigest()
    kept_file = home() / "sha256.json"
    kept = json.loads(kept_file.read_text())
    kept[str(path.resolve())]["sha256"] = "kept"  # what a later run finds there, unchanged file
    kept_file.write_text(json.dumps(kept))
    hashed_file.cache_clear()  # as in a new process
    assert file_sha256(path) == "kept"
    stat = path.stat()
    time.sleep(0.01)
    path.write_bytes(b"other")  # the same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same modification time
    hashed_file.cache_clear()
    assert file_sha256(path) == hashlib.sha256(b"other").hexdigest()


@pytest.mark.parametrize("arch", list(architectures()))
def test_every_network_loads_without_being_initialised_first(arch: str) -> None:
    """load_checkpoint builds a network on the meta device and assigns the checkpoint's tensors:
    every tensor the network uses must come from its state dict, or it is built in full instead."""
    with torch.device("meta"):
        model = build_model(arch, 5)
    state = {name: torch.zeros(t.shape, dtype=t.dtype) for name, t in model.state_dict().items()}
    model.load_state_dict(state, assign=True)
    assert meta_tensors(model) == []
