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
