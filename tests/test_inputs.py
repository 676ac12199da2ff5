"""Which rasters a batch means: folders, globs, list files, and outputs that would collide."""

from __future__ import annotations

from pathlib import Path

import pytest

from fcn import FcnpipeError
from pipeline.inputs import batch_outputs, expand_inputs
from pipeline.storage import Location


def loc(*paths: Path) -> list[Location]:
    return [Location(str(p)) for p in paths]


@pytest.fixture
def scenes(tmp_path: Path) -> Path:
    for name in ("b.tif", "a.TIF", "c.vrt", "notes.md", "sub/d.tif"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    return tmp_path


def test_a_folder_means_its_rasters_sorted(scenes: Path) -> None:
    assert [p.name for p in expand_inputs(str(scenes))] == ["a.TIF", "b.tif", "c.vrt"]


def test_globs_and_single_files(scenes: Path) -> None:
    assert [p.name for p in expand_inputs(f"{scenes}/**/*.tif")] == ["b.tif", "d.tif"]
    assert expand_inputs(str(scenes / "c.vrt")) == loc(scenes / "c.vrt")


def test_a_list_file_is_relative_to_itself_and_checked(scenes: Path) -> None:
    listing = scenes / "todo.txt"
    listing.write_text("# tonight\nsub/d.tif\n\nb.tif  # again\nb.tif\n")
    assert expand_inputs(str(listing)) == loc(scenes / "b.tif", scenes / "sub" / "d.tif")
    listing.write_text("b.tif\nmissing.tif\n")
    with pytest.raises(FcnpipeError, match=r"lists files that do not exist: .*missing\.tif"):
        expand_inputs(str(listing))


def test_nothing_there_yet_is_no_error_but_a_missing_folder_is(tmp_path: Path) -> None:
    assert expand_inputs(str(tmp_path)) == []  # a watched folder, still empty
    assert expand_inputs(str(tmp_path / "*.tif")) == []
    with pytest.raises(FcnpipeError, match=r"the folder .*missing of .* does not exist"):
        expand_inputs(str(tmp_path / "missing" / "*.tif"))
    with pytest.raises(FcnpipeError, match=r"scene\.tif does not exist"):
        expand_inputs(str(tmp_path / "scene.tif"))


def test_outputs_go_beside_or_into_a_folder_and_never_collide(scenes: Path, tmp_path: Path) -> None:
    inputs = loc(scenes / "b.tif", scenes / "sub" / "d.tif")
    assert batch_outputs(inputs, None) == loc(scenes / "b.zarr", scenes / "sub" / "d.zarr")
    out = tmp_path / "out"
    assert batch_outputs(inputs, Location(str(out))) == loc(out / "b.zarr", out / "d.zarr")
    twins = loc(scenes / "b.tif", scenes / "sub" / "b.tif")
    with pytest.raises(FcnpipeError, match="would both write"):
        batch_outputs(twins, Location(str(out)))
