"""What a person at a terminal gets: --version, the results table, model commands that work anywhere (file or
registry URI, no params file), readable progress and epoch lines, legends on the map images."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dbdgan import __version__
from dbdgan.checkpoint import save_model_file
from dbdgan.cli import main
from dbdgan.models import create_model


@pytest.fixture
def outside(tmp_path, monkeypatch) -> Path:
    """A working folder with no params.yaml, no store, nothing of the repository."""
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return work


@pytest.fixture
def student_file(tmp_path) -> Path:
    path = tmp_path / "student.pt"
    save_model_file(path, "mobile_tiny", {}, create_model("mobile_tiny"), {"input_size": 48})
    return path


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    # the version, then where the code came from (tests/test_lineage.py checks the commit itself)
    assert capsys.readouterr().out.strip().startswith(f"dbdgan {__version__}, commit ")


def test_model_commands_work_outside_the_repository_without_a_params_file(outside, student_file, capsys):
    assert not (outside / "params.yaml").exists()
    assert main(["model-info", "--model", str(student_file), "--size", "48", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == str(student_file) and 50_000 < info["params"] < 200_000
    assert main(["export-onnx", "--model", str(student_file), "--out", "s.onnx", "--size", "48", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["max_abs_diff"] < 1e-4 and (outside / "s.onnx").is_file()
    photos = outside / "photos"
    photos.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(photos / "a.png")
    assert main(["predict", str(photos), "--model", str(student_file), "-o", "maps", "--no-progress"]) == 0
    with Image.open(outside / "maps" / "a_blur.png") as blur:
        assert blur.size == (56, 40)
    # the step commands still need their params: a missing params.yaml is the usual clear error
    assert main(["validate", "--data", "d", "--out", "r"]) == 2
    assert "params file not found: params.yaml" in capsys.readouterr().err


def test_export_onnx_int8_is_calibrated_on_a_photo_folder(outside, student_file, capsys, caplog):
    """`--int8 PHOTOS --out X` writes the static (QDQ) int8 file to X, calibrated on that folder, says how far its
    maps are from the float model's there and warns when the folder has fewer photos than the calibration
    takes; a folder with no photos fails before anything is written."""
    import onnx

    photos = outside / "calibration"
    photos.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    assert main(["export-onnx", "--model", str(student_file), "--out", "s_int8.onnx", "--size", "48",
                 "--int8", str(photos), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["onnx_int8"] == str(outside / "s_int8.onnx") and result["int8_calibration_images"] == 3
    assert sorted(p.name for p in outside.glob("*.onnx")) == ["s_int8.onnx"]  # the float file stayed scratch
    ops = {node.op_type for node in onnx.load("s_int8.onnx").graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    agreement = result["int8_vs_float_on_calibration_photos"]
    assert agreement["images"] == 3 and 0.0 <= agreement["map_mae"] < 0.1 and agreement["agreement_at_0_5"] > 0.8
    assert "3 photos, fewer than the 32 the calibration uses" in caplog.text
    assert main(["export-onnx", "--model", str(student_file), "--out", "q.onnx", "--size", "48",
                 "--int8", str(photos)]) == 0
    line = capsys.readouterr().out.strip().splitlines()
    assert len(line) == 1 and line[0].startswith(f"wrote {outside / 'q.onnx'} (static int8, calibrated on 3 photos)")
    (outside / "empty").mkdir()
    assert main(["export-onnx", "--model", str(student_file), "--out", "t.onnx", "--int8", "empty"]) == 1
    assert "--int8 empty" in capsys.readouterr().err
    assert not (outside / "t.onnx").exists()


def test_export_onnx_takes_a_registry_uri(outside, tmp_path, capsys):
    """A champion registered in a real sqlite store exports by URI, and the ONNX file holds its weights."""
    import onnxruntime as ort
    import torch
    from test_registry import make_workspace

    from dbdgan.checkpoint import load_model_file
    from dbdgan.registration import register_models
    from dbdgan.tracking import ModelNames

    params, models, _, manifest, tracking = make_workspace(tmp_path / "store")
    result = register_models(params, models, ModelNames(), tmp_path / "store" / "metrics", manifest, tracking)
    assert result["student"]["gate"]["result"] == "promoted"
    capsys.readouterr()  # what registering printed
    code = main(["export-onnx", "--model", "models:/dbd-student@champion", "--tracking-uri", tracking.resolved_uri,
                 "--out", "champion.onnx", "--size", "48", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["max_abs_diff"] < 1e-4
    assert "Downloading artifacts" not in captured.err and "TracerWarning" not in captured.err  # quiet (issue 26)
    sample = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    expected = load_model_file(models["student"])(sample).detach().numpy()
    session = ort.InferenceSession(str(outside / "champion.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: sample.numpy()})[0]
    assert np.abs(got - expected).max() < 1e-4
    assert main(["model-info", "--model", "models:/dbd-student@champion", "--tracking-uri", tracking.resolved_uri,
                 "--size", "48", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == sum(p.numel() for p in create_model("mobile_tiny")
                                                                 .parameters())


def _metrics(root: Path, name: str, infocus: float, mae: float, params: int | None) -> None:
    data = {"infocus_max_f": infocus, "max_f": infocus + 0.1, "mae": mae, "n_images": 7,
            "settings": {"split": "test"}}
    if params:
        data["efficiency"] = {"params": params, "latency_ms_b1": 12.345}
    (root / "metrics").mkdir(parents=True, exist_ok=True)
    (root / "metrics" / f"{name}.json").write_text(json.dumps(data))


def test_results_is_a_table_of_the_numbers_and_says_where_the_plots_are(tmp_path, capsys):
    _metrics(tmp_path, "teacher", 0.8123, 0.1012, 2_810_000)
    _metrics(tmp_path, "student", 0.7894, 0.1134, 500_000)
    _metrics(tmp_path, "baseline_laplacian", 0.699, 0.265, None)
    _metrics(tmp_path, "baseline_all_blurred", 0.388, 0.336, None)
    (tmp_path / "params.yaml").write_text("model: {teacher: teacher_small, student: mobile_small}\n")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "registered.json").write_text(json.dumps(
        {"student": {"model_uri": "models:/dbd-student/4", "gate": {"result": "rejected"}}}))
    assert main(["results", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    # the run folder's params snapshot names the networks
    assert lines[0] == "Results (teacher_small -> mobile_small on synthetic data, test split, 7 images):"
    header = lines[1].split()
    assert header[:3] == ["model", "in-focus", "max-F"]
    rows = {line.split()[0] + (" " + line.split()[1] if line.split()[0] == "baseline" else ""): line.split()
            for line in lines[3:7]}
    assert rows["teacher"][1:] == ["0.812", "0.912", "0.101", "2.81", "12.3"]
    assert rows["student"][1:] == ["0.789", "0.889", "0.113", "0.50", "12.3"]
    assert rows["baseline laplacian"][2:] == ["0.699", "0.799", "0.265", "-", "-"]
    assert rows["baseline all"][3:] == ["0.388", "0.488", "0.336", "-", "-"]
    assert f"{tmp_path}/metrics/plots/curves.png" in out and "white = blurred" in out
    assert "models:/dbd-student/4 (alias challenger; gate: rejected)" in out
    assert "{" not in out  # no JSON page


def test_progress_is_a_bar_on_a_terminal_and_a_few_lines_in_a_log(monkeypatch, caplog):
    from tqdm import tqdm

    from dbdgan import progress as progress_module
    from dbdgan.progress import LogProgress, progress

    monkeypatch.delenv("DBDGAN_PROGRESS", raising=False)
    monkeypatch.setattr(progress_module.sys, "stderr", open("/dev/null", "w"))  # noqa: SIM115 - a file, not a tty
    caplog.set_level(logging.INFO, logger="dbdgan.progress")
    bar = progress(range(5), "prepare", unit="img", log_every_s=0.0)
    assert isinstance(bar, LogProgress) and list(bar) == [0, 1, 2, 3, 4]
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("prepare: 1/5 img") and lines[-1].startswith("prepare: 5/5 img")
    assert not any("\r" in line for line in lines)
    caplog.clear()
    assert list(progress(range(3), "train", log_every_s=None)) == [0, 1, 2]
    assert caplog.records == []  # training logs its own line per epoch instead
    monkeypatch.setenv("DBDGAN_PROGRESS", "bar")
    assert isinstance(progress(range(2), "x"), tqdm)
    monkeypatch.setenv("DBDGAN_PROGRESS", "off")
    assert list(progress(range(2), "x", log_every_s=0.0)) == [0, 1] and caplog.records == []


def test_one_readable_line_per_epoch():
    from dbdgan.training.engine import epoch_line

    row = {"loss_content": 0.41234, "loss_adv": 0.25, "val_mae": 0.1049, "val_max_f": 0.9012,
           "val_max_f_sharp": 0.8123, "val_score": 0.7074}
    line = epoch_line("train_teacher", 3, 10, row, kept=True, seconds=12.4)
    assert line == ("train_teacher epoch 3/10 (12 s): loss content 0.4123, adv 0.2500 | val in-focus max-F 0.812, "
                    "blurred max-F 0.901, MAE 0.105, score 0.707 | kept (best so far)")


def test_map_images_carry_a_legend(tmp_path):
    from dbdgan.data.contact_sheet import render_contact_sheet
    from dbdgan.evaluation.plots import GRID_FRAME, GRID_HEADER, GRID_LEGEND, GRID_PAD, GridRow, grid_size, save_grid

    rng = np.random.default_rng(0)
    rows = [GridRow("s0", rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), np.zeros((30, 40)),
                    {"student": np.ones((30, 40))})]
    path = save_grid(rows, ["student"], tmp_path / "grid.png", cell=64)
    with Image.open(path) as grid:
        assert grid.size == grid_size(1, 3, 64)
        strip = np.asarray(grid.convert("L"))[-GRID_LEGEND:]
    ramp = strip[GRID_LEGEND // 2, GRID_PAD + 1: GRID_PAD + 63]
    assert ramp[0] < 20 and ramp[-1] > 235 and np.all(np.diff(ramp.astype(int)) >= 0)  # black -> white
    assert (strip[:, 80:] < 128).any()  # the text beside it
    # each panel is framed: the all-blurred (white) map of the third column is not white on white (issue 26)
    with Image.open(path) as grid:
        pixels = np.asarray(grid.convert("RGB"))
    left, top = GRID_PAD + 2 * (64 + GRID_PAD), GRID_HEADER
    assert (pixels[top + 10:top + 50, left + 10:left + 50] == 255).all()  # the map itself is white
    for y, x in ((top - 1, left + 30), (top + 64, left + 30), (top + 30, left - 1), (top + 30, left + 64)):
        assert tuple(pixels[y, x]) == GRID_FRAME
    sheet = np.asarray(render_contact_sheet([(rows[0].image, np.ones((30, 40)))], tile=64).convert("L"))
    assert sheet[-22 + 6 + 5, 4 + 1] < 20 and sheet[-22 + 6 + 5, 4 + 62] > 235
