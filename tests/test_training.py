"""Training engines on a tiny synthetic set: resume, frozen teacher, divergence, DDP."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pipeline_fixtures import TINY_FILES, run_step, tiny_params, tiny_tracking

from dbdgan import steps
from dbdgan.checkpoint import load_model_file, read_model_file
from dbdgan.io_utils import file_sha256
from dbdgan.model_runs import training_run_id
from dbdgan.training import engine
from dbdgan.training.engine import NonFiniteLossError


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """One prepared tiny dataset for the whole module; each test trains into its own folder."""
    root = tmp_path_factory.mktemp("train_data")
    return steps.prepare(tiny_params(), out=root / "data" / "prepared").parent


TEACHER_EPOCHS = ["train_teacher.epochs=2"]  # on profiles/tiny.yaml: a teacher here trains two epochs unless told
PARAMS = [arg for path in TINY_FILES for arg in ("--params", str(path))]  # the same files on a command line


def _params(extra: list[str] | None = None):
    return tiny_params([*TEACHER_EPOCHS, *(extra or [])])


def _train(root: Path, data: Path, extra: list[str] | None = None, **given):
    """Teacher training with every output under `root` (as `dbdgan train-teacher --root root`)."""
    return run_step(root, "train_teacher", _params(extra), dataset=data, **given)


def _distill(root: Path, data: Path, extra: list[str] | None = None, **given):
    return run_step(root, "distill_student", _params(extra), dataset=data, **given)


def _last_state(root: Path, stage: str) -> dict:
    return torch.load(root / "checkpoints" / stage / "last.pt", weights_only=True)


def test_teacher_training_writes_best_model_and_history(tmp_path, prepared):
    result = _train(tmp_path, prepared)
    assert [row["epoch"] for row in result["history"]] == [1, 2]
    for row in result["history"]:
        assert 0.0 <= row["val_max_f"] <= 1.0 and 0.0 <= row["val_mae"] <= 1.0
        assert all(torch.isfinite(torch.tensor(v)) for k, v in row.items() if k.startswith("loss_"))
    payload = read_model_file(tmp_path / "models" / "teacher.pt")
    assert result["best_metric"] == "val_score"  # in-focus max-F - MAE picks the kept epoch
    assert payload["metadata"]["val_score"] == pytest.approx(result["best_score"])
    assert result["best_score"] == max(row["val_max_f_sharp"] - row["val_mae"] for row in result["history"])
    assert payload["metadata"]["input_size"] == 48  # validated on whole images at image_size (no val_size)
    # the file does not name its run (its bytes would differ on every retraining); the run is found by its hash
    assert "mlflow_run_id" not in payload["metadata"]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tiny_tracking(tmp_path).resolved_uri)
    found = training_run_id(client, tmp_path / "models" / "teacher.pt", payload["metadata"])
    assert found == result["mlflow_run_id"] and found
    model = load_model_file(tmp_path / "models" / "teacher.pt")
    assert model(torch.rand(1, 3, 37, 53)).shape == (1, 1, 37, 53)


@pytest.mark.parametrize("extra", [[], ["train_teacher.ema_decay=0.9"]], ids=["raw", "moving-average"])
def test_killed_run_resumes_to_the_same_weights(tmp_path, prepared, monkeypatch, extra):
    straight = tmp_path / "straight"
    _train(straight, prepared, extra)

    resumed = tmp_path / "resumed"
    real_start_epoch = engine.start_epoch

    def killed_in_second_epoch(loader, seed, epoch):
        if epoch == 1:
            raise KeyboardInterrupt("simulated kill")
        real_start_epoch(loader, seed, epoch)

    monkeypatch.setattr(engine, "start_epoch", killed_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        _train(resumed, prepared, extra)
    assert _last_state(resumed, "teacher")["epoch"] == 1
    assert not (resumed / "models" / "teacher.pt").exists()
    monkeypatch.setattr(engine, "start_epoch", real_start_epoch)
    _train(resumed, prepared, extra)

    a, b = _last_state(straight, "teacher"), _last_state(resumed, "teacher")
    assert a["epoch"] == b["epoch"] == 2
    for name in ("teacher", "d1"):
        for key, tensor in a["modules"][name].items():
            assert torch.equal(tensor, b["modules"][name][key]), f"{name}.{key} differs after resume"
    assert ("averaged" in a) == bool(extra)
    for key, tensor in a.get("averaged", {}).items():
        assert torch.equal(tensor, b["averaged"][key]), f"moving average {key} differs after resume"


def test_moving_average_is_what_is_validated_and_kept(tmp_path, prepared):
    result = _train(tmp_path, prepared, ["train_teacher.epochs=1", "train_teacher.ema_decay=0.5"])
    state = _last_state(tmp_path, "teacher")
    kept = read_model_file(tmp_path / "models" / "teacher.pt")["state_dict"]
    averaged = {key.removeprefix("module."): value for key, value in state["averaged"].items()
                if key.startswith("module.")}
    raw = state["modules"]["teacher"]
    assert set(kept) == set(averaged) and all(torch.equal(kept[k], averaged[k]) for k in kept)
    assert any(not torch.equal(kept[k], raw[k]) for k in kept if kept[k].is_floating_point())
    from dbdgan.training.runtime import init_runtime

    params = _params(["train_teacher.ema_decay=0.5"])
    _, val = engine.make_loaders(prepared, params.train_teacher, params.seed, init_runtime("cpu"))
    rescored = engine.validation_scores(load_model_file(tmp_path / "models" / "teacher.pt"), val,
                                        torch.device("cpu"), params.evaluate.beta2)
    assert rescored["val_mae"] == pytest.approx(result["history"][0]["val_mae"], abs=1e-6)


def test_multi_scale_knobs_reach_the_loaders(tmp_path, prepared):
    from dbdgan.training.runtime import init_runtime

    params = _params(["train_teacher.crop_scale=[0.2, 0.3]", "train_teacher.image_size=32",
                      "train_teacher.val_size=56"])
    train, val = engine.make_loaders(prepared, params.train_teacher, 0, init_runtime("cpu"))
    assert train.dataset.scale == (0.2, 0.3) and train.dataset.augment
    assert next(iter(train))["image"].shape[-2:] == (32, 32)
    assert next(iter(val))["image"].shape[-2:] == (56, 56)  # whole images at the validation size


def _parameters(path: Path) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in load_model_file(path).named_parameters()}


def test_init_from_starts_both_trainings_from_pretrained_weights(tmp_path, prepared):
    """The synthetic pre-training hand-over: with a negligible learning rate the result is the init model."""
    pre = tmp_path / "pretrained"
    _train(pre, prepared, ["train_teacher.epochs=1"])
    _distill(pre, prepared, ["distill_student.epochs=1"])
    tiny_lr = ["train_teacher.optim.lr=1e-12", "distill_student.optim.lr=1e-12"]
    fine = tmp_path / "fine"
    for stage, model in (("train_teacher", "teacher"), ("distill_student", "student")):
        init = pre / "models" / f"{model}.pt"
        run_step(fine, stage, _params([*tiny_lr, f"{stage}.epochs=1"]), dataset=prepared, init=init)
        out = fine / "models" / f"{model}.pt"
        start, end = _parameters(init), _parameters(out)
        assert start.keys() == end.keys()
        for name, tensor in start.items():
            assert torch.allclose(tensor, end[name], atol=1e-8), f"{model}.{name} did not start from {init}"
        assert read_model_file(out)["metadata"]["init_from_sha256"] == file_sha256(init)

    scratch = tmp_path / "scratch"
    _train(scratch, prepared, [*tiny_lr, "train_teacher.epochs=1"])
    start, end = _parameters(pre / "models" / "teacher.pt"), _parameters(scratch / "models" / "teacher.pt")
    assert any(not torch.allclose(start[name], end[name]) for name in start)  # the check above can fail
    assert "init_from_sha256" not in read_model_file(scratch / "models" / "teacher.pt")["metadata"]


def test_init_from_a_different_network_is_refused(tmp_path, prepared):
    pre = tmp_path / "pretrained"
    _train(pre, prepared, ["train_teacher.epochs=1"])
    wrong = pre / "models" / "teacher.pt"
    with pytest.raises(ValueError, match=r"init_from .*teacher\.pt holds a 'teacher_tiny' model"):
        _distill(tmp_path / "s", prepared, teacher=wrong, init=wrong)


def test_non_finite_loss_stops_without_touching_checkpoints(tmp_path, prepared, monkeypatch):
    _train(tmp_path, prepared, ["train_teacher.epochs=1"])
    last = tmp_path / "checkpoints" / "teacher" / "last.pt"
    before = last.read_bytes()

    from dbdgan.training import gan as gan_module

    real_content = gan_module.content_loss
    calls = {"n": 0}

    def diverging(logits, target, kind="bce"):
        calls["n"] += 1
        value = real_content(logits, target, kind=kind)
        return value * float("nan") if calls["n"] == 2 else value

    monkeypatch.setattr(gan_module, "content_loss", diverging)
    with pytest.raises(NonFiniteLossError, match=r"'content' is nan at epoch 1, step 2"):
        _train(tmp_path, prepared, ["train_teacher.epochs=2"])
    assert last.read_bytes() == before


def test_distillation_keeps_teacher_frozen(tmp_path, prepared, monkeypatch):
    _train(tmp_path, prepared, ["train_teacher.epochs=1"])
    from dbdgan.training import student as student_module

    loaded = {}

    def capture(path, device="cpu"):
        loaded["teacher"] = load_model_file(path, device)
        loaded["before"] = {k: v.clone() for k, v in loaded["teacher"].state_dict().items()}
        return loaded["teacher"]

    monkeypatch.setattr(student_module, "load_model_file", capture)
    result = _distill(tmp_path, prepared)
    assert result["history"][0]["loss_consistency"] > 0
    assert result["history"][0]["loss_feature"] > 0
    after = loaded["teacher"].state_dict()
    assert not loaded["teacher"].training
    for key, tensor in loaded["before"].items():
        assert torch.equal(tensor, after[key]), f"teacher {key} changed during distillation"
    assert all(not p.requires_grad for p in loaded["teacher"].parameters())
    assert read_model_file(tmp_path / "models" / "student.pt")["arch"] == "mobile_tiny"


def test_ddp_two_cpu_processes_train_end_to_end(tmp_path, prepared):
    """torchrun with 2 gloo processes on CPU; only rank 0 writes the model and checkpoints."""
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this build")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "dbdgan.cli", "train-teacher", *PARAMS, "--set", "train_teacher.epochs=1", "--data", str(prepared)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "models" / "teacher.pt").is_file()
    state = _last_state(tmp_path, "teacher")
    assert state["epoch"] == 1
    assert not list((tmp_path / "checkpoints" / "teacher").glob("*.tmp"))
    shutil.rmtree(tmp_path / "checkpoints")


@pytest.mark.parametrize("overrides", [
    ["model.student=efficientunet_tiny", "model.discriminator=unet", "distill_student.adversarial_loss=ragan"],
    ["model.student=mobile_tiny", "distill_student.adversarial_loss=hinge", "distill_student.consistency=l2",
     "distill_student.content_loss=bce", "distill_student.optim.schedule=poly"],
], ids=["efficientunet-unetD-ragan", "mobile-hinge-l2-poly"])
def test_both_students_distil_with_each_option(tmp_path, prepared, overrides):
    _train(tmp_path, prepared, ["train_teacher.epochs=1"])
    result = _distill(tmp_path, prepared, overrides)
    row = result["history"][0]
    assert all(torch.isfinite(torch.tensor(v)) for v in row.values())
    arch = overrides[0].split("=")[1]
    model = load_model_file(tmp_path / "models" / "student.pt")
    assert read_model_file(tmp_path / "models" / "student.pt")["arch"] == arch
    assert model(torch.rand(1, 3, 45, 71)).shape == (1, 1, 45, 71)


def test_moving_average_warms_up_its_decay():
    """The first update copies; update n (n >= 1) moves by 1 - min(decay, (1 + n) / (10 + n)) of the way."""
    net = torch.nn.BatchNorm1d(1)
    averaged = engine.moving_average(net, 0.9)
    expected = 0.0
    for n, value in enumerate([4.0, 2.0, 8.0, 1.0, 5.0]):
        net.weight.data.fill_(value)
        net.num_batches_tracked.fill_(n + 1)
        averaged.update_parameters(net)
        decay = 0.0 if n == 0 else min(0.9, (1 + n) / (10 + n))
        expected = decay * expected + (1 - decay) * value
        assert averaged.module.weight.item() == pytest.approx(expected, rel=1e-6)
        assert averaged.module.num_batches_tracked.item() == n + 1  # counters follow the network
    assert engine.moving_average(net, None) is None


# Katib's default StdOut metrics collector filter (katib pkg/metricscollector, DefaultFilter)
KATIB_FILTER = r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)"


def test_each_epoch_logs_a_line_that_katibs_default_collector_reads(tmp_path, prepared):
    """A tiny `dbdgan train-teacher` run as a Katib trial runs it: its output, read with Katib's default filter
    (every line, name=value pairs of the metrics asked for), gives each epoch's numbers as MLflow logged them."""
    command = [sys.executable, "-m", "dbdgan.cli", "train-teacher", *PARAMS, *(f"--set={o}" for o in TEACHER_EPOCHS),
               "--data", str(prepared), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow/mlflow.db", "--json"]
    proc = subprocess.run(command, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow/mlflow.db")
    run_id = json.loads(proc.stdout)["mlflow_run_id"]
    wanted = {"epoch", "val_score", "val_max_f_sharp", "val_mae"}
    collected: dict[str, list[float]] = {name: [] for name in wanted}
    for line in (proc.stdout + proc.stderr).splitlines():
        for name, value, *_ in re.findall(KATIB_FILTER, line):
            if name in wanted:
                collected[name].append(float(value))
    assert collected["epoch"] == [1.0, 2.0]
    for name in wanted - {"epoch"}:
        logged = sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)  # step = epoch
        assert collected[name] == pytest.approx([m.value for m in logged], rel=1e-5), name
    line = next(line for line in proc.stderr.splitlines() if "epoch=2 " in line)
    assert re.search(r"\bloss_\w+=\d", line), line  # the loss terms ride along
