from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from dbdgan.config import ConfigError, load_params, params_from_dict, parse_override

REPO = Path(__file__).resolve().parents[1]


def _missing_keys(model: BaseModel, tree: dict, prefix: str = "") -> list[str]:
    """Schema fields that the params file does not spell out (nested sections recursively)."""
    missing = []
    for name in type(model).model_fields:
        if name not in tree:
            missing.append(prefix + name)
        elif isinstance(getattr(model, name), BaseModel) and isinstance(tree[name], dict):
            missing += _missing_keys(getattr(model, name), tree[name], f"{prefix}{name}.")
    return missing


def test_repo_params_file_is_valid_and_complete():
    params = load_params(REPO / "params.yaml")
    assert params.data.source == "synthetic"
    assert params.evaluate.beta2 == pytest.approx(0.3)
    assert params.register.tracking_uri.startswith("sqlite:///")
    assert _missing_keys(params, yaml.safe_load((REPO / "params.yaml").read_text())) == []  # every knob


def test_overrides_parse_yaml_values():
    params = load_params(REPO / "params.yaml", ["train_teacher.epochs=3", "distill_student.feature_strides=[8]",
                                                "data.input=null", "train_teacher.optim.lr=1e-4"])
    assert params.train_teacher.epochs == 3
    assert params.distill_student.feature_strides == [8]
    assert params.train_teacher.optim.lr == pytest.approx(1e-4)
    assert parse_override("a.b=") == ("a.b", "")


@pytest.mark.parametrize(("override", "fragment"), [
    ("train_teacher.epochs=0", "train_teacher.epochs"),
    ("train_teacher.epochs=many", "'many'"),
    ("model.discriminator=resnet", "'resnet'"),
    ("model.unknown_knob=1", "model.unknown_knob"),
    ("data.split.train=0.9", "sum to 1"),
    ("data.source=cuhk", "data.input"),
])
def test_bad_values_name_key_and_value(override, fragment):
    with pytest.raises(ConfigError) as info:
        load_params(REPO / "params.yaml", [override])
    assert fragment in str(info.value)
    assert "params.yaml" in str(info.value)


def test_malformed_override_and_files(tmp_path):
    with pytest.raises(ConfigError, match="dotted.key=value"):
        params_from_dict({}, ["no_equals_sign"])
    with pytest.raises(ConfigError, match="not a section"):
        params_from_dict({"seed": 1}, ["seed.inner=1"])
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_params(scalar)


def test_missing_keys_take_defaults(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 7\n")
    params = load_params(path)
    assert params.seed == 7
    assert params.model.teacher == "teacher_tiny"


def test_profile_overlays_merge_key_by_key(tmp_path):
    profile = tmp_path / "profile.yaml"
    profile.write_text("train_teacher:\n  epochs: 3\n  optim: {lr: 0.01}\nmodel:\n  teacher_kwargs: {width: 8}\n")
    params = load_params([REPO / "params.yaml", profile])
    base = load_params(REPO / "params.yaml")
    assert params.train_teacher.epochs == 3
    assert params.train_teacher.optim.lr == pytest.approx(0.01)
    assert params.train_teacher.optim.lr_d == base.train_teacher.optim.lr_d
    assert params.train_teacher.batch_size == base.train_teacher.batch_size
    assert params.model.teacher_kwargs == {"width": 8}


@pytest.mark.parametrize("profile", sorted((REPO / "profiles").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_profiles_are_valid(profile):
    params = load_params([REPO / "params.yaml", profile], ["data.input=/some/folder"])
    assert params.model.teacher and params.model.student


def test_pretraining_profiles_hand_over_to_the_real_profile():
    """synthetic-pretrain trains the networks cuhk-cpu trains, and cuhk-cpu-pretrained starts from its outputs."""
    real = ["data.input=/some/folder"]
    pretrain = load_params([REPO / "params.yaml", REPO / "profiles" / "synthetic-pretrain.yaml"])
    scratch = load_params([REPO / "params.yaml", REPO / "profiles" / "cuhk-cpu.yaml"], real)
    fine = load_params([REPO / "params.yaml", REPO / "profiles" / "cuhk-cpu.yaml",
                        REPO / "profiles" / "cuhk-cpu-pretrained.yaml"], real)
    assert pretrain.data.source == "synthetic" and fine.data.source == "cuhk"
    assert pretrain.model == scratch.model == fine.model
    assert fine.train_teacher.init_from == pretrain.train_teacher.out
    assert fine.distill_student.init_from == pretrain.distill_student.out
    assert fine.evaluate.model_dump(exclude={"out_dir"}) == scratch.evaluate.model_dump(exclude={"out_dir"})
    outputs = lambda p: {p.data.prepared_dir, p.train_teacher.out, p.distill_student.out,  # noqa: E731
                         p.evaluate.out_dir, p.register.out}
    assert not outputs(fine) & outputs(scratch)  # both runs can be kept side by side


def test_make_train_real_runs_pretraining_first_with_pretrain_1(tmp_path):
    """`make -n` prints the commands without running them: the profile stack each step gets."""
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "-n", "-s", "train-real", f"DATA={tmp_path}", "PRETRAIN=1"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    lines = [line for line in out.splitlines() if "dbdgan " in line]
    steps = [line.split("dbdgan ")[1].split()[0] for line in lines]
    assert steps[:3] == ["prepare", "train-teacher", "distill-student"]
    assert all("synthetic-pretrain.yaml" in line for line in lines[:3])
    assert steps[3:] == ["prepare", "validate", "train-teacher", "distill-student", "evaluate", "register",
                         "results"]
    for line in lines[3:]:
        assert "profiles/cuhk-cpu.yaml" in line and "profiles/cuhk-cpu-pretrained.yaml" in line
        assert f"data.input={tmp_path}" in line
