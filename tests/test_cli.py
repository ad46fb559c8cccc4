from pathlib import Path

from dbdgan.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


def test_every_pipeline_step_has_a_subcommand():
    parser = build_parser()
    for command in ["prepare", "validate", "train-teacher", "distill-student", "evaluate", "register"]:
        args = parser.parse_args([command, "--params", "p.yaml", "--set", "a.b=1", "--set", "c=2"])
        assert args.params == ["p.yaml"]
        assert args.overrides == ["a.b=1", "c=2"]


def test_step_flags_come_from_the_step_table_and_default_under_root(tmp_path):
    from dbdgan import graph
    from dbdgan.cli import step_arguments

    parser = build_parser()
    for one in graph.STEPS:
        args = parser.parse_args([one.command, "--root", str(tmp_path)])
        given = step_arguments(one, args)
        assert given["out"] == tmp_path / graph.ARTIFACTS[one.output].path
        for name in one.inputs:
            assert given[name] == tmp_path / graph.ARTIFACTS[name].path
        flag = graph.ARTIFACTS[one.inputs[0]].flag if one.inputs else "--out"
        moved = step_arguments(one, parser.parse_args([one.command, flag, str(tmp_path / "elsewhere")]))
        assert moved[one.inputs[0] if one.inputs else "out"] == tmp_path / "elsewhere"
    registered = step_arguments(graph.step("register"), parser.parse_args(
        ["register", "--student-name", "s-x", "--experiment", "e-x", "--tracking-uri", "sqlite:///x.db"]))
    assert registered["names"].student == "s-x" and registered["names"].teacher == "dbd-teacher"
    assert registered["tracking"].experiment == "e-x" and registered["tracking"].resolved_uri == "sqlite:///x.db"


def test_a_real_source_without_its_folder_is_refused_by_prepare_only(capsys, tmp_path):
    code = main(["prepare", "--params", str(REPO / "params.yaml"), "--source", "cuhk", "--out", str(tmp_path)])
    assert code == 1
    assert "--input" in capsys.readouterr().err
    # the other steps take the same params without complaint (validate then fails on the missing folder)
    code = main(["validate", "--params", str(REPO / "params.yaml"), "--set", "data.source=cuhk",
                 "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "report")])
    assert code == 1 and "absent" in capsys.readouterr().err


def test_bad_override_exits_2_with_the_key(capsys):
    code = main(["validate", "--params", str(REPO / "params.yaml"), "--set", "data.min_size=-5"])
    assert code == 2
    assert "data.min_size" in capsys.readouterr().err


def test_missing_params_file_exits_2(capsys, tmp_path):
    assert main(["prepare", "--params", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_validate_missing_folder_is_a_clear_error(capsys, tmp_path):
    code = main(["validate", "--params", str(REPO / "params.yaml"), "--data", str(tmp_path / "absent"),
                 "--out", str(tmp_path / "report")])
    assert code == 1
    assert "absent" in capsys.readouterr().err


def test_model_info_json_reports_params_and_flops(capsys):
    import json

    code = main(["model-info", "--params", str(REPO / "params.yaml"), "--preset", "mobile_tiny", "--size", "64",
                 "--json"])
    assert code == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "mobile_tiny"
    assert 50_000 < info["params"] < 200_000
    assert info["flops"] > 0 and info["latency_ms_b1"] > 0


def test_export_onnx_command_round_trips(capsys, tmp_path):
    import json

    from dbdgan.checkpoint import save_model_file
    from dbdgan.models import create_model

    model_file = tmp_path / "student.pt"
    save_model_file(model_file, "mobile_tiny", {}, create_model("mobile_tiny"))
    code = main(["export-onnx", "--params", str(REPO / "params.yaml"), "--model", str(model_file),
                 "--out", str(tmp_path / "student.onnx"), "--size", "48", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["max_abs_diff"] < 1e-4
    assert (tmp_path / "student.onnx").is_file()


def test_results_names_the_run_and_its_registered_models(capsys, tmp_path, monkeypatch):
    import json

    from dbdgan.config import load_params

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    registered = tmp_path / "reports" / "registered.json"
    registered.parent.mkdir()
    registered.write_text(json.dumps({"student": {"model_uri": "models:/dbd-student-cuhk/3",
                                                  "gate": {"result": "promoted"}}}))
    files = [str(REPO / "params.yaml"), str(REPO / "profiles/cuhk-cpu.yaml")]
    code = main(["results", "--params", files[0], "--params", files[1], "--root", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    model = load_params(files).model
    # the CUHK profile scores the test split (val, which chose the kept epoch, beside it)
    assert out.startswith(f"Results ({model.teacher} -> {model.student} on cuhk data, test split):")
    assert f"{tmp_path}/metrics/<model>.json" in out and "no metrics in" in out
    assert "student: models:/dbd-student-cuhk/3 (alias challenger; gate: promoted)" in out


def test_a_step_prints_one_line_and_its_details_with_json(capsys, tmp_path):
    """Quiet by default (issue 26): the row's summary line; --json: the JSON the details were before."""
    import json

    tiny = ["--params", str(REPO / "params.yaml"), "--set", "data.synthetic.num_images=8",
            "--set", "data.synthetic.size=32"]
    assert main(["prepare", *tiny, "--out", str(tmp_path / "a")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [f"prepared the dataset: {tmp_path / 'a' / 'manifest.csv'}"]
    assert main(["prepare", *tiny, "--out", str(tmp_path / "b"), "--json", "-v"]) == 0  # -v also after the command
    assert json.loads(capsys.readouterr().out) == {"manifest": str(tmp_path / "b" / "manifest.csv")}


def test_each_steps_summary_is_one_line_without_name_value_pairs():
    """What each step's row prints, for results shaped like the real ones: one line, and no `name=value` that
    Katib's default collector (which reads a trial's every line) would take for a metric."""
    import re
    from types import SimpleNamespace

    from dbdgan import graph

    results = {
        "prepare": "data/prepared/manifest.csv",
        "validate": SimpleNamespace(summary={"success": True, "n_rows": 24, "split_counts": {"train": 16, "val": 4,
                                             "test": 4}, "evaluated_expectations": 25, "warnings": [],
                                             "data_docs": "reports/validation/index.html"}),
        "train_teacher": {"stage": "train_teacher", "best_metric": "val_score", "best_score": 0.7074,
                          "best": {"epoch": 2}, "mlflow_run_id": "abc", "history": [{}, {}]},
        "distill_student": {"stage": "distill_student", "rank": 1},
        "evaluate": {"teacher": {"infocus_max_f": 0.81, "max_f": 0.9, "mae": 0.1, "n_images": 4},
                     "student": {"infocus_max_f": 0.79, "max_f": 0.88, "mae": 0.11}},
        "register": {"teacher": {"model_uri": "models:/t/1", "reused": True, "version": 1},
                     "student": {"model_uri": "models:/s/2", "reused": False,
                                 "gate": {"result": "promoted", "reason": "beats the champion", "checks": []}}},
    }
    lines = {one.name: one.summary(one.brief(results[one.name])) for one in graph.STEPS}
    for name, line in lines.items():
        assert line and "\n" not in line and not re.search(r"[\w|-]+\s*=\s*[+-]?\d", line), (name, line)
    assert lines["validate"] == ("valid: 24 rows (train 16, val 4, test 4), 25 expectations passed, 0 warnings; "
                                 "Data Docs reports/validation/index.html")
    assert lines["train_teacher"] == "train_teacher: kept epoch 2 (val_score 0.7074); MLflow run abc"
    assert lines["distill_student"] == "distill_student: process 1 done"
    assert lines["evaluate"].startswith("in-focus max-F / MAE: teacher 0.810 / 0.100, student 0.790 / 0.110")
    assert lines["register"] == ("registered teacher models:/t/1 (the same file: its version reused), student "
                                 "models:/s/2 (alias challenger); gate on the student: promoted (beats the champion)")
    # --json keeps what the commands printed before: the brief, not the whole result
    assert graph.step("register").brief(results["register"])["student"] == {
        "model_uri": "models:/s/2", "reused": False, "gate": "promoted", "reason": "beats the champion"}
