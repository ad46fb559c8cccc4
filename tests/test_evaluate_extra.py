"""Sets scored beside the main split: evaluate.extra_splits (val beside test) and extra datasets (`--extra
szu=PATH`, the real SZU-BD sample), their numbers under a prefix, their files under metrics/extra/, the
registry's metric.<label>.* tags, the model card, and the gate deciding on the main split alone."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient
from PIL import Image
from pipeline_fixtures import REPO, artifact, tiny_params, tiny_tracking

from dbdgan import cli, dvc_pipeline, graph, steps
from dbdgan.checkpoint import save_model_file
from dbdgan.config import load_params
from dbdgan.evaluation.extra import ExtraDataset, parse_extra
from dbdgan.evaluation.report import Beside, _score_beside
from dbdgan.evaluation.scores import HEADLINE
from dbdgan.models import create_model
from dbdgan.results import results_text
from dbdgan.run_folder import write_run_pipeline
from dbdgan.tracking import configure


@pytest.fixture(scope="module")
def scored(tmp_path_factory, shared_szu):
    """Tiny models evaluated on the synthetic test split, with val and the SZU sample beside it."""
    root = tmp_path_factory.mktemp("beside")
    params = tiny_params(["evaluate.onnx=false", "evaluate.extra_splits=[val]"])
    steps.prepare(params, out=artifact(root, "dataset"))
    tracking = tiny_tracking(root)
    configure(tracking, params.register.service_timeout_s)  # the training run in the experiment register uses
    run_id = MlflowClient().create_run(mlflow.get_experiment_by_name(tracking.experiment).experiment_id).info.run_id
    torch.manual_seed(0)
    for role, arch in (("teacher", "teacher_tiny"), ("student", "mobile_tiny")):
        save_model_file(artifact(root, role), arch, {}, create_model(arch), {"mlflow_run_id": run_id, "input_size": 48})
    models = {"teacher": artifact(root, "teacher"), "student": artifact(root, "student")}
    results = steps.evaluate(params, dataset=artifact(root, "dataset"), out=artifact(root, "scores"), **models,
                             tracking=tracking, extra=[ExtraDataset("szu", "szu", shared_szu)])
    return {"root": root, "params": params, "models": models, "results": results, "tracking": tracking,
            "run_id": run_id, "szu": shared_szu}


def test_val_and_szu_numbers_sit_beside_the_test_split_and_equal_scoring_them_alone(scored, tmp_path):
    root, params, results = scored["root"], scored["params"], scored["results"]
    for name in ("teacher", "student", "baseline_laplacian", "baseline_all_blurred"):
        row = results[name]
        assert row["settings"]["split"] == "test" and row["szu"]["n_images"] == 50
        assert row["val"]["n_images"] == sum(1 for line in (root / "data/prepared/manifest.csv").read_text()
                                             .splitlines() if ",val," in line)
    # one implementation: the numbers beside are those of scoring that split, or the raw folder, on its own
    alone = steps.evaluate(params, dataset=artifact(root, "dataset"), out=tmp_path / "val", split="val",
                           student=scored["models"]["student"], tracking=scored["tracking"])
    szu = steps.evaluate(params, dataset=scored["szu"], out=tmp_path / "szu", layout="szu",
                         student=scored["models"]["student"], tracking=scored["tracking"])
    for key in HEADLINE:
        assert results["student"]["val"][key] == pytest.approx(alone["student"][key], abs=1e-9)
        assert results["student"]["szu"][key] == pytest.approx(szu["student"][key], abs=1e-9)
        assert results["student"][key] != results["student"]["szu"][key]
    # the real masks' polarity survives: an all-blurred map errs exactly on the in-focus pixels
    in_focus = []
    for gt in sorted((scored["szu"] / "gt").glob("*.png")):
        with Image.open(gt) as mask:
            in_focus.append(float((np.asarray(mask.convert("L")) < 128).mean()))
    assert results["baseline_all_blurred"]["szu"]["mae"] == pytest.approx(np.mean(in_focus), abs=1e-4)
    assert 0.2 < np.mean(in_focus) < 0.3


def test_files_beside_the_main_ones_and_in_the_training_run(scored):
    metrics = scored["root"] / "metrics"
    headline = json.loads((metrics / "student.json").read_text())
    assert sorted(headline) == sorted(HEADLINE)  # the DVC metric file keeps its shape
    details = json.loads((metrics / "details" / "student.json").read_text())
    assert details["szu"]["infocus_max_f"] == scored["results"]["student"]["szu"]["infocus_max_f"]
    assert "settings" not in details["szu"] and "val" in details
    extra = metrics / "extra" / "szu"
    assert json.loads((extra / "student.json").read_text())["mae"] == details["szu"]["mae"]
    assert json.loads((extra / "details" / "student.json").read_text())["settings"]["split"] == "test"
    assert (extra / "plots" / "curves.png").stat().st_size > 1000 and (extra / "plots" / "grid.png").is_file()
    assert not (metrics / "extra" / "val").exists()  # a split's numbers only: its files would be untracked
    logged = {a.path for a in MlflowClient().list_artifacts(scored["run_id"], "evaluation/extra/szu")}
    assert "evaluation/extra/szu/student.json" in logged


def test_registered_versions_carry_the_numbers_and_the_gate_decides_on_the_test_split(scored):
    root, results = scored["root"], scored["results"]
    test_f, val_f = results["student"]["max_f"], results["student"]["val"]["max_f"]
    assert abs(test_f - val_f) > 1e-3  # so that a floor between them shows which split the gate read
    params = scored["params"].model_copy(deep=True)
    gate = params.register.gate
    gate.min_max_f, gate.max_mae, gate.max_latency_ms = (test_f + val_f) / 2, 1.0, 1e6
    registered = steps.register(params, dataset=artifact(root, "dataset"), **scored["models"],
                                scores=artifact(root, "scores"), out=artifact(root, "registered"),
                                tracking=scored["tracking"])
    client = MlflowClient(scored["tracking"].resolved_uri)
    student = registered["student"]
    tags = client.get_model_version(student["name"], str(student["version"])).tags
    for label in ("szu", "val"):
        for key in ("infocus_max_f", "max_f", "mae", "n_images"):
            assert float(tags[f"metric.{label}.{key}"]) == pytest.approx(results["student"][label][key])
    assert float(tags["metric.max_f"]) == pytest.approx(results["student"]["max_f"])
    assert json.loads(tags["eval_protocol"])["split"] == "test"
    assert student["gate"]["result"] == ("promoted" if test_f > val_f else "rejected")
    assert f"max_f {test_f:.4f}" in json.dumps(student["gate"])
    version = client.get_model_version(student["name"], str(student["version"]))
    assert (f"Beside it, the validation split: it chose the recipe and the kept epoch, or a final fit trained "
            f"on it, so it flatters "
            f"({results['student']['val']['n_images']} images)") in version.description
    assert f"dataset 'szu', scored whole (50 images; not the training data): in-focus max-F " \
           f"{results['student']['szu']['infocus_max_f']:.3f}" in version.description
    mlflow.set_tracking_uri(scored["tracking"].resolved_uri)
    card = mlflow.artifacts.load_text(f"runs:/{student['run_id']}/model_card/student.md")
    assert "Beside the test split, under the same protocol:" in card
    assert (f"| szu: dataset 'szu', scored whole (50 images; not the training data) | "
            f"{results['student']['szu']['infocus_max_f']:.3f} |") in card
    assert "(those of szu from other photos)" in card


def test_results_show_them_beside_the_main_table(scored):
    text = results_text(scored["root"])
    val_images = scored["results"]["student"]["val"]["n_images"]
    assert f"Beside it, the val split ({val_images} images):" in text
    assert (f"Beside it, dataset szu, scored whole, plots in {scored['root'] / 'metrics' / 'extra' / 'szu'} "
            "(50 images):") in text
    student_rows = [line.split() for line in text.splitlines() if line.strip().startswith("student")]
    szu = scored["results"]["student"]["szu"]
    assert ["student", f"{szu['infocus_max_f']:.3f}", f"{szu['max_f']:.3f}", f"{szu['mae']:.3f}"] in student_rows
    assert text.index("val split") < text.index("dataset szu")  # splits first


def test_a_later_evaluation_without_them_leaves_no_stale_numbers(scored, tmp_path):
    out = tmp_path / "metrics"
    (out / "extra" / "szu").mkdir(parents=True)
    (out / "extra" / "szu" / "student.json").write_text("{}")
    params = tiny_params(["evaluate.onnx=false"])
    results = steps.evaluate(params, dataset=artifact(scored["root"], "dataset"), out=out,
                             student=scored["models"]["student"], tracking=scored["tracking"])
    assert "szu" not in results["student"] and "val" not in results["student"]
    assert not (out / "extra").exists()


def test_the_extra_syntax() -> None:
    assert parse_extra("szu=data/SZU-BD") == ExtraDataset("szu", "szu", Path("data/SZU-BD"))
    mine = parse_extra("mine=folder:sharp-white:/data/a:b")  # a colon in the path stays in the path
    assert mine == ExtraDataset("mine", "folder", Path("/data/a:b"), "sharp-white")
    assert parse_extra(mine.spec()) == mine
    assert parse_extra("szu2=szu:c:/x").path == Path("c:/x")
    with pytest.raises(ValueError, match="label 'photos' is no layout, so name one: photos=LAYOUT:x"):
        parse_extra("photos=x")
    with pytest.raises(ValueError, match="layout 'folder' needs a polarity"):
        parse_extra("mine=folder:x")
    with pytest.raises(ValueError, match="label 'val' must match"):
        parse_extra("val=szu:x")
    with pytest.raises(ValueError, match="expected LABEL="):
        parse_extra("szu")


def test_the_cli_passes_them_to_evaluate_and_refuses_a_bad_one(capsys) -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["evaluate", "--extra", "szu=/d/szu", "--extra", "dut=dut:/d/dut"])
    given = cli.step_arguments(graph.step("evaluate"), args)
    assert given["extra"] == [ExtraDataset("szu", "szu", Path("/d/szu")), ExtraDataset("dut", "dut", Path("/d/dut"))]
    assert "extra" not in cli.step_arguments(graph.step("evaluate"), parser.parse_args(["evaluate"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "--extra", "photos=/d"])
    assert "label 'photos' is no layout" in capsys.readouterr().err
    assert cli.main(["steps", "--dvc", "--extra", "szu=/d"]) != 0
    assert "give it with --dvc --root DIR" in capsys.readouterr().err


def test_a_run_folder_pipeline_scores_them_in_its_evaluate_stage(tmp_path, monkeypatch) -> None:
    (tmp_path / "szu").mkdir()
    monkeypatch.chdir(tmp_path)
    params = load_params([REPO / "params.yaml", REPO / "profiles" / "cuhk-cpu.yaml"])
    write_run_pipeline(tmp_path / "run", params, extra=[parse_extra("szu=szu")])
    stage = yaml.safe_load((tmp_path / "run" / "dvc.yaml").read_text())["stages"]["evaluate"]
    assert f"--extra szu=szu:{tmp_path / 'szu'} " in stage["cmd"]
    assert str(tmp_path / "szu") in stage["deps"] and {"metrics/extra": {"cache": False}} in stage["outs"]
    written = yaml.safe_load((tmp_path / "run" / "params.yaml").read_text())
    assert written["evaluate"]["split"] == "test" and written["evaluate"]["extra_splits"] == ["val"]
    # without extra datasets the stage is the repository's: the default pipeline does not change
    write_run_pipeline(tmp_path / "plain", params)
    plain = yaml.safe_load((tmp_path / "plain" / "dvc.yaml").read_text())["stages"]["evaluate"]
    assert plain["outs"] == dvc_pipeline.dvc_stages()["evaluate"]["outs"] and "--extra" not in plain["cmd"]
    with pytest.raises(FileNotFoundError, match=r"extra dataset folder\(s\) not found: szu=szu:.*nowhere"):
        write_run_pipeline(tmp_path / "bad", params, extra=[parse_extra("szu=nowhere")])
    assert not (tmp_path / "bad").exists()


def test_extra_splits_must_not_repeat_the_main_split() -> None:
    with pytest.raises(ValueError, match=r"evaluate.extra_splits \['val'\] must not repeat a split or hold "
                                         r"evaluate.split \('val'\)"):
        load_params(REPO / "params.yaml", ["evaluate.split=val", "evaluate.extra_splits=[val]"])


def test_a_label_that_names_a_score_is_refused() -> None:
    with pytest.raises(ValueError, match=r"label 'mae' of a set scored beside the main split is already a key of "
                                         r"the scores of \['student'\]"):
        _score_beside({}, {}, {"student": {"mae": 0.1}}, [Beside("mae", Path("x"), "test")], tiny_params())
