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
    assert params.register.gate.min_max_f == pytest.approx(0.5)
    assert _missing_keys(params, yaml.safe_load((REPO / "params.yaml").read_text())) == []  # every knob


def test_overrides_parse_yaml_values():
    params = load_params(REPO / "params.yaml", ["train_teacher.epochs=3", "distill_student.feature_strides=[8]",
                                                "data.polarity=null", "train_teacher.optim.lr=1e-4"])
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
    ("data.input=/photos", "data.input"),  # where things are is a step argument, never a param
    ("train_teacher.out=models/t.pt", "train_teacher.out"),
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
    profile.write_text("train_teacher:\n  epochs: 3\n  optim: {lr: 0.01}\nmodel:\n  teacher_kwargs: {base_width: 8}\n")
    params = load_params([REPO / "params.yaml", profile])
    base = load_params(REPO / "params.yaml")
    assert params.train_teacher.epochs == 3
    assert params.train_teacher.optim.lr == pytest.approx(0.01)
    assert params.train_teacher.optim.lr_d == base.train_teacher.optim.lr_d
    assert params.train_teacher.batch_size == base.train_teacher.batch_size
    assert params.model.teacher_kwargs == {"base_width": 8}


@pytest.mark.parametrize("profile", sorted((REPO / "profiles").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_profiles_are_valid(profile):
    params = load_params([REPO / "params.yaml", profile])
    assert params.model.teacher and params.model.student


def test_pretraining_profiles_hand_over_to_the_real_profile():
    """synthetic-pretrain trains the networks cuhk-cpu-scratch trains, and cuhk-cpu-finetune keeps them
    (the Makefile hands the pre-trained models over with `--init-from`)."""
    pretrain = load_params([REPO / "params.yaml", REPO / "profiles" / "synthetic-pretrain.yaml"])
    scratch = load_params([REPO / "params.yaml", REPO / "profiles" / "cuhk-cpu-scratch.yaml"])
    fine = load_params([REPO / "params.yaml", REPO / "profiles" / "cuhk-cpu-scratch.yaml",
                        REPO / "profiles" / "cuhk-cpu-finetune.yaml"])
    assert pretrain.data.source == "synthetic" and fine.data.source == "cuhk"
    assert pretrain.model == scratch.model == fine.model
    assert fine.evaluate == scratch.evaluate


def test_make_train_real_runs_pretraining_first_with_pretrain_1(tmp_path):
    """`make -n` prints the commands without running them: the profile stack each step gets."""
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "-n", "-s", "train-real", f"DATA={tmp_path}", "PRETRAIN=1"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    pre, real = [line.split() for line in out.splitlines() if "dbdgan steps --dvc" in line]
    after = lambda words, flag: words[words.index(flag) + 1]  # noqa: E731
    assert pre[1:4] == ["steps", "--dvc", "--root"] and real[1:4] == ["steps", "--dvc", "--root"]
    # each run folder's pipeline is then reproduced by DVC in that folder, and the run ends with its table
    repro = [line for line in out.splitlines() if line.rstrip().endswith("dvc repro")]
    assert [line.split("; cd ")[-1].split()[0] for line in repro] == ["runs/pretrain", "runs/real-finetuned"]
    assert out.splitlines()[-1].split()[1:] == ["results", "--root", "runs/real-finetuned"]
    assert after(pre, "--until") == "distill_student" and "profiles/synthetic-pretrain.yaml" in pre
    assert after(pre, "--root") == "runs/pretrain" and after(real, "--init-from") == "runs/pretrain"
    assert after(real, "--root") == "runs/real-finetuned" and after(real, "--input") == str(tmp_path)
    assert "profiles/cuhk-cpu-scratch.yaml" in real and "profiles/cuhk-cpu-finetune.yaml" in real


@pytest.mark.parametrize(("override", "expected"), [
    ("distill_student.epoch=3", "distill_student.epoch: Extra inputs are not permitted (got 3) (from --set "
                                "distill_student.epoch=3); did you mean distill_student.epochs?"),
    ("distil_student.epochs=3", "distil_student: Extra inputs are not permitted (from --set "
                                "distil_student.epochs=3); did you mean distill_student?"),
])
def test_a_set_typo_names_the_override_and_suggests_the_key(override, expected):
    """Issue 26: a typo used to say only "invalid params in params.yaml"."""
    with pytest.raises(ConfigError) as raised:
        load_params(REPO / "params.yaml", [override])
    assert str(raised.value) == f"invalid params in {REPO / 'params.yaml'}: {expected}"
