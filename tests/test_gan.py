"""The two adversarial updates as objects: what each step changes, and that the training benchmark runs them."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from pipeline_fixtures import REPO, tiny_params

from dbdgan.models import create_model
from dbdgan.training.gan import DistillationGAN, TeacherGAN
from dbdgan.training.runtime import init_runtime

TINY = ["model.discriminator_width=8"]


def _batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"image": torch.rand(2, 3, 48, 48, generator=generator),
            "mask": (torch.rand(2, 1, 48, 48, generator=generator) > 0.5).float()}


def _snapshot(modules: dict[str, torch.nn.Module]) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in modules.items()}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items() if v.is_floating_point())


def test_teacher_step_updates_the_teacher_and_d1():
    gan = TeacherGAN(create_model("teacher_tiny"), tiny_params(TINY), init_runtime("cpu"))
    before = _snapshot(gan.modules)
    losses = gan.step(_batch(), 0, 0)
    assert set(losses) == {"d1", "content", "adv"} and all(v == v for v in losses.values())
    assert set(gan.modules) == set(gan.optimizers) == {"teacher", "d1"}
    assert all(_changed(before[name], module) for name, module in gan.modules.items())


def test_distillation_step_updates_student_d2_d3_and_never_the_teacher():
    teacher = create_model("teacher_tiny")
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    gan = DistillationGAN(teacher, create_model("mobile_tiny"), tiny_params(TINY), init_runtime("cpu"))
    before = _snapshot(gan.modules)
    losses = gan.step(_batch(), 0, 0)
    assert set(losses) == {"d2", "d3", "content", "consistency", "feature", "adv", "distill"}
    assert all(_changed(before[name], module) for name, module in gan.modules.items())
    assert all(torch.equal(frozen[k], v) for k, v in teacher.state_dict().items())
    assert not any(p.requires_grad for p in teacher.parameters())


def test_the_training_benchmark_measures_these_updates(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    sys.modules.pop("bench_training", None)
    import bench_training

    params, runtime, batch = tiny_params(TINY), init_runtime("cpu"), _batch()
    calls: list[str] = []
    for cls in (TeacherGAN, DistillationGAN):
        real = cls.step
        monkeypatch.setattr(cls, "step", lambda self, *a, _real=real, _name=cls.__name__: (
            calls.append(_name), _real(self, *a))[1])
    for kind in ("teacher", "distill"):
        step, network = bench_training.variant_step(kind, "fp32", params, batch, runtime)
        assert step() is not None and sum(p.numel() for p in network.parameters()) > 0
    assert calls == ["TeacherGAN", "DistillationGAN"]
    assert Path(bench_training.__file__).parent == REPO / "benchmarks"


def _bf16_channels_last_step(kind: str) -> tuple[dict[str, float], dict[str, torch.nn.Module]]:
    torch.manual_seed(0)
    params = tiny_params([*TINY, *(f"{s}.{k}=true" for s in ("train_teacher", "distill_student")
                                   for k in ("cpu_bf16", "channels_last"))])
    teacher = create_model("teacher_tiny")
    gan = (TeacherGAN(teacher, params, init_runtime("cpu")) if kind == "teacher"
           else DistillationGAN(teacher, create_model("mobile_tiny"), params, init_runtime("cpu")))
    return gan.step(_batch(), 0, 0), gan.modules


def test_cpu_bf16_and_channels_last_train_fp32_weights_the_same_way_each_time():
    for kind in ("teacher", "distill"):
        losses, modules = _bf16_channels_last_step(kind)
        again, _ = _bf16_channels_last_step(kind)
        assert losses == again and all(v == v for v in losses.values())  # deterministic, finite
        convs = [m for module in modules.values() for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(c.weight.dtype == torch.float32 for c in convs)  # autocast: weights stay fp32
        assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs if c.weight.dim() == 4
                   and c.weight.shape[-1] > 1)


def test_cpu_bf16_autocasts_convolutions_and_fp32_training_does_not():
    from dbdgan.training.amp import Precision

    conv, image = torch.nn.Conv2d(3, 4, 3), torch.rand(1, 3, 8, 8)
    for cpu_bf16, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        with Precision(torch.device("cpu"), enabled=True, cpu_bf16=cpu_bf16).autocast():
            assert conv(image).dtype == dtype  # `amp` alone is CUDA only


def test_the_final_fit_trains_on_train_and_val_and_keeps_the_last_epoch(tmp_path):
    from dbdgan import steps
    from dbdgan.data.dataset import DBDDataset
    from dbdgan.training import engine

    data = steps.prepare(tiny_params(), out=tmp_path / "prepared").parent
    params = tiny_params(["train_teacher.train_splits=[train, val]", "train_teacher.best_metric=last"])
    train, _ = engine.make_loaders(data, params.train_teacher, 0, init_runtime("cpu"))
    assert len(train.dataset) == sum(len(DBDDataset(data, s, 32, augment=False)) for s in ("train", "val"))
    assert [engine.selection_score({"val_score": s}, "last", epoch) for epoch, s in ((1, 0.9), (2, 0.1))] == [1, 2]
