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
