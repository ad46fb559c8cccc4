"""Training speed of the CUHK profile's networks: img/s and GFLOP/s of a full training step, beside inference's.

For each params profile (default: cuhk-cpu, the ImageNet-pretrained teacher_lite2 and lite0_unet at 224 px,
batch 8, as `make train-real` trains them), with that profile's batch size, crop size, discriminators, losses,
loss weights and optimisers:
  - teacher step: dbdgan.training.gan.TeacherGAN.step, the object training runs (teacher forward, D1
    update, content + adversarial loss, teacher backward and optimiser step);
  - distillation step: dbdgan.training.gan.DistillationGAN.step (frozen teacher forward with features,
    student forward with the feature constraint, D2 and D3 updates, content + consistency + feature + two
    adversarial terms, backward, optimiser step);
  - inference of the trained network at the same batch and size, as prediction runs it
    (dbdgan.inference.prepare_network: batch norm folded, channels-last weights, inference mode): the
    reference for how well a training step uses the CPU.
GFLOP counts are torch.utils.flop_counter's (2 per multiply-add of convolutions and matmuls, backward
included; elementwise ops, normalisation and the optimiser are not counted), taken once per step in fp32, with
one correction: torch 2.13's formula for a convolution's weight gradient ignores groups, which counts each
depthwise convolution (most of an EfficientNet-Lite) C times over; here each gradient costs what the forward
convolution does. GFLOP/s = those FLOPs / the median step time. Networks are freshly initialised (weights do
not change the cost).

Each step runs in up to four variants (--variants): fp32 (what training runs today), bf16 (the whole step
under torch.autocast("cpu", bfloat16); this CPU has AVX-512 BF16), channels-last (every module's weights and
the batch in channels-last memory format) and both: the training params `cpu_bf16` and `channels_last`,
which the stages read (profiles/cuhk-cpu.yaml switches both on). This measures speed, not accuracy.

Step times are medians of --steps steps after --warmup, on one batch from the training loader (loading
excluded: bench_loader.py measures it), in a process set up by dbdgan.training.runtime.init_runtime as the
training stages are. The load average is recorded per row: on a shared machine it says how far to trust it.

Usage: python benchmarks/bench_training.py [--profiles cuhk-cpu cuhk-cpu-scratch] [--steps 3]
       [--variants fp32 bf16 channels-last bf16+channels-last]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from common import (
    ROOT,
    add_common_args,
    apply_runtime_env,
    finish,
    machine_info,
    markdown_table,
    set_threads,
    timed_median,
)

PROFILES = {
    "cuhk-cpu": ["params.yaml", "profiles/cuhk-cpu.yaml"],
    "cuhk-cpu-scratch": ["params.yaml", "profiles/cuhk-cpu-scratch.yaml"],
    "default": ["params.yaml"],
}
VARIANTS = ("fp32", "bf16", "channels-last", "bf16+channels-last")
CUHK_IMAGES = 604  # the CUHK folder `make train-real` trains on: the projection's dataset size


def load_profile(name: str) -> Any:
    """The profile's params; data.source is forced to synthetic (only the data folder differs here)."""
    from dbdgan.config import load_params

    return load_params([ROOT / p for p in PROFILES[name]], overrides=["data.source=synthetic"])


def build_gan(kind: str, params: Any, runtime: Any) -> tuple[Any, Any]:
    """The training object of `kind` (teacher: TeacherGAN, distill: DistillationGAN) and the trained network."""
    from dbdgan.models import create_model
    from dbdgan.training.gan import DistillationGAN, TeacherGAN

    teacher = create_model(params.model.teacher, **params.model.teacher_kwargs).train()
    if kind == "teacher":
        return TeacherGAN(teacher, params, runtime), teacher
    student = create_model(params.model.student, **params.model.student_kwargs).train()
    gan = DistillationGAN(teacher, student, params, runtime)
    for module in gan.modules.values():
        module.train()
    return gan, student


def variant_step(kind: str, variant: str, params: Any, batch: dict[str, Any], runtime: Any
                 ) -> tuple[Callable[[], object], Any]:
    """One training step of `kind` in `variant` (a fresh GAN each time: no variant inherits another's state),
    switched on through the training params the stages read (`cpu_bf16`, `channels_last`)."""
    section = "train_teacher" if kind == "teacher" else "distill_student"
    switches = {"cpu_bf16": "bf16" in variant, "channels_last": "channels-last" in variant}
    cfg = getattr(params, section).model_copy(update=switches)
    gan, network = build_gan(kind, params.model_copy(update={section: cfg}), runtime)

    def step() -> object:
        return gan.step(batch, 0, 0)

    return step, network


def conv_backward_flops(grad_out_shape: list[int], x_shape: list[int], w_shape: list[int], _bias: Any,
                        _stride: Any, _padding: Any, _dilation: Any, transposed: bool, _output_padding: Any,
                        _groups: int, output_mask: list[bool], out_shape: Any = None, **kwargs: Any) -> int:
    """aten.convolution_backward's FLOPs with groups honoured: the input gradient and the weight gradient each
    cost what the forward convolution does (w_shape holds in-channels per group)."""
    from torch.utils.flop_counter import conv_flop_count

    return conv_flop_count(x_shape, w_shape, grad_out_shape, transposed) * (int(output_mask[0]) + int(output_mask[1]))


def step_flops(kind: str, params: Any, batch: dict[str, Any], runtime: Any) -> int:
    """FLOPs of one fp32 training step of `kind` (forward and backward of every network in it)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    step, _ = variant_step(kind, "fp32", params, batch, runtime)
    with FlopCounterMode(display=False,
                         custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops}) as counter:
        step()
    return int(counter.get_total_flops())


def inference_rate(network: Any, image: Any, warmup: int, steps: int) -> dict[str, float]:
    """img/s and GFLOP/s of `network` on the batch `image`, as prediction runs it."""
    import torch

    from dbdgan.inference import prepare_network
    from dbdgan.models.info import count_flops

    network = network.eval()
    flops = count_flops(network, tuple(image.shape[-2:]), batch=image.shape[0])
    prepared = prepare_network(network)
    with torch.inference_mode():
        median_s, _ = timed_median(lambda: prepared(image), warmup, steps)
    return {"inference_images_per_s": image.shape[0] / median_s, "inference_gflop_s": flops / 1e9 / median_s,
            "inference_gflop_per_image": flops / 1e9 / image.shape[0]}


@contextlib.contextmanager
def one_batch(params: Any, runtime: Any) -> Iterator[dict[str, Any]]:
    """One training batch (augmentation on, the profile's crop size) from a few prepared synthetic images."""
    from dbdgan.data.prepare import prepare_dataset
    from dbdgan.training.engine import make_loader

    cfg = params.train_teacher
    scratch = Path(tempfile.mkdtemp(prefix="bench_training_"))
    try:
        data = scratch / "synthetic"
        count = max(4 * cfg.batch_size, 24)
        prepare_dataset("synthetic", data, seed=params.seed, split=params.data.split.model_dump(),
                        synthetic={**params.data.synthetic, "num_images": count, "size": cfg.image_size})
        loader = make_loader(data, ["train"], cfg.image_size, cfg.batch_size, 0, params.seed, runtime,
                             train=True, crop_scale=cfg.crop_scale)
        yield next(iter(loader))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def projected_minutes(params: Any, kind: str, step_s: float, n_images: int) -> float:
    """Minutes of training steps alone (no validation, no loading) over the profile's epochs of `kind`."""
    cfg = params.train_teacher if kind == "teacher" else params.distill_student
    return cfg.epochs * math.floor(round(n_images * params.data.split.train) / cfg.batch_size) * step_s / 60.0


def bench_profile(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    from dbdgan.training.runtime import init_runtime, seed_everything

    params = load_profile(name)
    runtime = init_runtime("cpu")  # the training stages' process settings (e.g. denormals flushed to zero)
    seed_everything(params.seed, params.deterministic)
    teacher_cfg, student_cfg = params.train_teacher, params.distill_student
    if (teacher_cfg.batch_size, teacher_cfg.image_size) != (student_cfg.batch_size, student_cfg.image_size):
        print(f"[{name}] note: teacher and student batch/size differ; both use the teacher's", flush=True)
    rows = []
    with one_batch(params, runtime) as batch:
        for kind in ("teacher", "distill"):
            flops = step_flops(kind, params, batch, runtime)
            base_s = None
            for variant in args.variants:
                step, network = variant_step(kind, variant, params, batch, runtime)
                median_s, times = timed_median(step, args.warmup, args.steps)
                base_s = median_s if variant == "fp32" else base_s
                size = teacher_cfg.batch_size
                row = {"profile": name, "step": kind, "variant": variant,
                       "model": params.model.teacher if kind == "teacher" else params.model.student,
                       "params_m": sum(p.numel() for p in network.parameters()) / 1e6,
                       "image_size": teacher_cfg.image_size, "batch_size": size, "step_s": median_s,
                       "step_s_all": times, "images_per_s": size / median_s,
                       "train_gflop_per_image": flops / 1e9 / size, "train_gflop_s": flops / 1e9 / median_s,
                       "speedup_vs_fp32": base_s / median_s if base_s else None,
                       "projected_minutes": projected_minutes(params, kind, median_s, args.dataset_images),
                       "load_average_1min": os.getloadavg()[0]}
                if variant == "fp32":
                    row.update(inference_rate(network, batch["image"], args.warmup, args.steps))
                    row["train_over_inference_gflop_s"] = row["train_gflop_s"] / row["inference_gflop_s"]
                rows.append(row)
                print(f"[{name}] {kind} {variant}: {median_s:.2f} s/step, {row['images_per_s']:.1f} img/s, "
                      f"{row['train_gflop_s']:.1f} GFLOP/s (load {row['load_average_1min']:.1f})", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", nargs="+", choices=sorted(PROFILES), default=["cuhk-cpu"])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row (median)")
    parser.add_argument("--dataset-images", type=int, default=CUHK_IMAGES,
                        help="dataset size of the projected minutes (default: the CUHK folder's %(default)s)")
    add_common_args(parser, "training")
    args = parser.parse_args()
    if "fp32" not in args.variants:
        parser.error("--variants needs fp32: the other variants and inference are compared with it")
    apply_runtime_env(args.allocator, args.omp_wait_policy)
    set_threads(args.threads)

    report: dict[str, Any] = {"machine": machine_info(), "settings": {**vars(args), "out_dir": str(args.out_dir)},
                              "rows": []}
    for name in args.profiles:
        report["rows"].extend(bench_profile(name, args))
    rows = report["rows"]
    sections = [
        f"Training steps on CPU, median of {args.steps} after {args.warmup} warm-up, one batch reused (loading "
        "excluded). teacher = teacher fwd/bwd + D1 update; distill = frozen teacher fwd + student fwd/bwd "
        "(feature constraint) + D2 and D3 updates. Each profile's own batch, size, losses and optimisers. "
        "GFLOP counts: torch's flop counter on one fp32 step (backward included). bf16 = the step under CPU "
        "autocast to bfloat16; channels-last = weights and batch in channels-last format. load = the 1-minute "
        "load average when the row finished (the machine is shared: compare rows of similar load).",
        markdown_table([("profile", "profile", ""), ("step", "step", ""), ("model", "trained model", ""),
                        ("variant", "variant", ""), ("image_size", "px", "d"), ("batch_size", "batch", "d"),
                        ("step_s", "s/step", ".3f"), ("images_per_s", "img/s", ".1f"),
                        ("speedup_vs_fp32", "vs fp32", ".2f"), ("train_gflop_per_image", "GFLOP/img", ".1f"),
                        ("train_gflop_s", "GFLOP/s", ".1f"), ("projected_minutes", "minutes", ".1f"),
                        ("load_average_1min", "load", ".1f")], rows),
        "Inference of the trained network at the same batch and size, as prediction runs it (batch norm "
        "folded, channels-last, fp32), against the fp32 training step:",
        markdown_table([("profile", "profile", ""), ("step", "step", ""), ("model", "network", ""),
                        ("inference_gflop_per_image", "GFLOP/img", ".2f"),
                        ("inference_images_per_s", "img/s", ".1f"), ("inference_gflop_s", "GFLOP/s", ".1f"),
                        ("train_gflop_s", "training GFLOP/s", ".1f"),
                        ("train_over_inference_gflop_s", "training / inference", ".2f")],
                       [row for row in rows if row["variant"] == "fp32"]),
        f"minutes = training steps alone for the profile's epochs on {args.dataset_images} images (its train "
        "split), no validation, loading or checkpoints.",
    ]
    finish("training", report, sections, args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
