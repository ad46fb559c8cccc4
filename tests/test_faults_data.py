"""Issue 13, data faults: prepare never destroys what it did not write, ids and output names never collide,
links never lead outside a dataset, folder replacement survives a crash, EXIF orientation is handled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dbdgan.data.prepare import MARKER, prepare_dataset, read_manifest
from dbdgan.data.readers import LayoutError, read_source
from dbdgan.io_utils import atomic_dir

TWO_WAY = {"train": 0.5, "val": 0.5}


def _pairs(root: Path, stems: list[str], size: tuple[int, int] = (40, 24)) -> Path:
    """A `folder`-layout dataset: images/<stem>.jpg and masks/<stem>.png (left third blurred)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    width, height = size
    rng = np.random.default_rng(0)
    for stem in stems:
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(root / "images" / f"{stem}.jpg")
        mask = np.zeros((height, width), dtype=np.uint8)
        mask[:, : width // 3] = 255
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    return root


def _prepare(raw: Path, out: Path) -> Path:
    return prepare_dataset("folder", out, input_dir=raw, polarity="blurred-white", split=TWO_WAY)


# --- 1. prepare --out replaces only its own previous output -------------------------------------------------

def test_prepare_refuses_to_replace_a_folder_it_did_not_write(tmp_path: Path) -> None:
    raw = _pairs(tmp_path / "raw", ["0", "1"])
    before = sorted(p.relative_to(raw) for p in raw.rglob("*"))
    with pytest.raises(ValueError, match=rf"output folder {raw} holds the input"):
        _prepare(raw, raw)  # --out pointing at the raw dataset
    with pytest.raises(ValueError, match="holds the input"):
        _prepare(raw, tmp_path)  # --out above the raw dataset (data/)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.txt").write_text("years of work")
    with pytest.raises(ValueError, match=rf"refusing to replace {notes}: it is not a folder written by"):
        _prepare(raw, notes)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        _prepare(raw, tmp_path / "a-file")
    assert sorted(p.relative_to(raw) for p in raw.rglob("*")) == before
    assert (notes / "thesis.txt").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "notes", "raw"]  # no temp folder left


def test_prepare_out_dot_is_refused_without_leaving_a_temp_dataset(tmp_path: Path, monkeypatch) -> None:
    raw = _pairs(tmp_path / "raw", ["0", "1"])
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("mine")
    monkeypatch.chdir(work)
    with pytest.raises(ValueError, match=rf"refusing to replace {work}"):
        _prepare(raw, Path("."))
    assert sorted(p.name for p in work.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "work"]


def test_prepare_replaces_its_own_output_an_empty_folder_and_a_pre_marker_output(tmp_path: Path) -> None:
    raw = _pairs(tmp_path / "raw", ["0", "1", "2", "3"])
    out = tmp_path / "out"
    out.mkdir()  # empty: fine
    _prepare(raw, out)
    marker = json.loads((out / MARKER).read_text())
    assert marker["source"] == "folder" and marker["samples"] == 4
    _prepare(_pairs(tmp_path / "raw", ["4"]), out)  # a rerun replaces the previous output
    assert len(read_manifest(out)) == 5
    (out / MARKER).unlink()  # an output written before the marker existed
    _prepare(raw, out)
    assert (out / MARKER).is_file()


# --- 2. sanitised ids never collide ---------------------------------------------------------------------------

def test_inputs_whose_sanitised_ids_collide_are_an_error_naming_both(tmp_path: Path) -> None:
    raw = _pairs(tmp_path / "raw", ["a b", "a_b"])
    with pytest.raises(LayoutError, match=r"a b\.jpg and .*a_b\.jpg both become sample id 'a_b'"):
        read_source("folder", raw)
    with pytest.raises(LayoutError, match="both become sample id"):
        _prepare(raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- 4. links out of the dataset are refused ------------------------------------------------------------------

def test_a_symlink_pointing_outside_the_dataset_is_refused_by_name(tmp_path: Path) -> None:
    raw = _pairs(tmp_path / "raw", ["0", "1"])
    secret = _pairs(tmp_path / "elsewhere", ["private"])
    link = raw / "images" / "2.jpg"
    link.symlink_to(secret / "images" / "private.jpg")
    (raw / "masks" / "2.png").symlink_to(raw / "masks" / "0.png")  # a link inside the dataset is fine
    with pytest.raises(LayoutError, match=rf"{link} is a symbolic link to .*private\.jpg, outside the dataset"):
        read_source("folder", raw)
    link.unlink()
    (raw / "images" / "2.jpg").symlink_to(raw / "images" / "1.jpg")
    assert len(read_source("folder", raw)) == 3
    linked_dir = _pairs(tmp_path / "dut", [])
    (linked_dir / "images").rmdir()
    (linked_dir / "images").symlink_to(secret / "images", target_is_directory=True)
    (linked_dir / "masks" / "private.png").write_bytes((secret / "masks" / "private.png").read_bytes())
    with pytest.raises(LayoutError, match="outside the dataset"):
        read_source("folder", linked_dir)


# --- 5. atomic_dir survives a crash between its two renames -------------------------------------------------

_CRASH_BETWEEN_RENAMES = """
import os, sys
from pathlib import Path
from dbdgan import io_utils

real, calls = os.replace, []
def replace(src, dst):
    calls.append(src)
    if len(calls) == 2:  # the old folder was set aside; the new one is not in place yet
        os._exit(9)
    real(src, dst)
io_utils.os.replace = replace
with io_utils.atomic_dir(Path(sys.argv[1])) as tmp:
    (tmp / "data.txt").write_text("new")
"""


def test_a_crash_between_the_renames_loses_nothing_and_temp_folders_are_cleaned(tmp_path: Path) -> None:
    target = tmp_path / "prepared"
    with atomic_dir(target) as tmp:
        (tmp / "data.txt").write_text("old")
    crashed = subprocess.run([sys.executable, "-c", _CRASH_BETWEEN_RENAMES, str(target)], check=False)
    assert crashed.returncode == 9
    assert not target.exists()  # the crash left the target missing: only the saved copy holds the data
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1  # the dead process's temp folder
    with pytest.raises(RuntimeError, match="next run fails too"), atomic_dir(target) as tmp:
        raise RuntimeError("next run fails too")
    assert (target / "data.txt").read_text() == "old"  # the saved copy was put back, not deleted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]  # stale temp folder removed
    with atomic_dir(target) as tmp:
        (tmp / "data.txt").write_text("newer")
    assert (target / "data.txt").read_text() == "newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


def test_temp_folders_of_a_live_process_are_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with atomic_dir(target) as outer:
        with atomic_dir(tmp_path / "other") as _:
            pass
        assert outer.is_dir()  # another atomic_dir beside it did not take it for stale
        (outer / "x").write_text("1")
    assert (target / "x").read_text() == "1"
    assert sorted(os.listdir(tmp_path)) == ["other", "out"]


# --- 3. predict: one distinct output per input ----------------------------------------------------------------

def test_predict_never_overwrites_a_map_of_the_same_call(tmp_path: Path) -> None:
    from dbdgan.models import create_model
    from dbdgan.predict import LoadedModel, _output_stems, predict_paths

    names = [Path(n) for n in ("a.jpg", "a.png", "a-2.jpg", "A.bmp", "sub/a-3.png")]
    stems = _output_stems(names)
    assert len({s.lower() for s in stems}) == len(names) and stems[0] == "a" and stems[2] == "a-2"

    photos = tmp_path / "photos"
    photos.mkdir()
    sizes = {"a.jpg": (30, 20), "a.png": (24, 36), "a-2.jpg": (40, 28)}
    for name, (width, height) in sizes.items():
        Image.fromarray(np.full((height, width, 3), 128, dtype=np.uint8)).save(photos / name)
    torch.manual_seed(0)
    model = LoadedModel(create_model("mobile_tiny").eval(), source="test", input_size=None)
    summary = predict_paths([photos], model, tmp_path / "maps", progress=False)
    maps = [Path(o["blur_map"]) for o in summary["outputs"]]
    assert summary["written"] == 3 and len(set(maps)) == 3
    assert sorted(p.name for p in (tmp_path / "maps").glob("*_blur.png")) == sorted(p.name for p in maps)
    for entry in summary["outputs"]:  # each map is its own photo's: the sizes tell them apart
        width, height = sizes[Path(entry["input"]).name]
        assert Image.open(entry["blur_map"]).size == (width, height)


# --- 13. EXIF orientation ---------------------------------------------------------------------------------------

def _rotated_jpeg(path: Path, width: int = 48, height: int = 32) -> Path:
    """A landscape JPEG stored with orientation 6: viewers show it rotated, as a portrait photo."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.full((height, width, 3), 90, dtype=np.uint8)).save(path, exif=exif.tobytes())
    return path


def test_prediction_applies_the_orientation_and_writes_the_map_as_the_photo_is_shown(tmp_path: Path) -> None:
    from dbdgan.models import create_model
    from dbdgan.predict import LoadedModel, predict_paths
    from dbdgan.serving import decode_image

    photo = _rotated_jpeg(tmp_path / "portrait.jpg")
    model = LoadedModel(create_model("mobile_tiny").eval(), source="test", input_size=None)
    summary = predict_paths([photo], model, tmp_path / "maps", progress=False)
    (entry,) = summary["outputs"]
    assert (entry["width"], entry["height"]) == (32, 48)  # portrait, as shown
    assert Image.open(entry["blur_map"]).size == (32, 48)
    assert Image.open(entry["overlay"]).size == (32, 48)
    assert decode_image(photo.read_bytes()).shape == (48, 32, 3)  # served predictions agree


def test_datasets_keep_the_stored_grid_and_validation_reports_the_orientation(tmp_path: Path) -> None:
    from dbdgan.data.checks import validate_dataset

    raw = _pairs(tmp_path / "raw", ["0", "1", "2"], size=(48, 32))
    _rotated_jpeg(raw / "images" / "0.jpg")  # its mask was drawn on the stored 48x32 grid
    out = tmp_path / "out"
    prepare_dataset("folder", out, input_dir=raw, polarity="blurred-white")  # train, val and test
    row = next(r for r in read_manifest(out) if r["id"] == "0")
    assert (row["width"], row["height"]) == ("48", "32")
    assert json.loads((out / MARKER).read_text())["exif_orientation"]["0"]["orientation"] == 6
    report = validate_dataset(out, tmp_path / "report", min_size=16)
    notes = report.summary["notes"]
    assert "1 image(s) carry an EXIF orientation tag" in notes[0] and "0: orientation 6" in notes[1]
    saved = json.loads((tmp_path / "report" / "validation.json").read_text())
    assert saved["notes"] == notes
