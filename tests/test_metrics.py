"""Accuracy metrics: hand-computed values on tiny maps, and agreement with pysodmetrics on random maps."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from dbdgan.evaluation.metrics import (
    MAE,
    AdaptiveFBeta,
    DBDMetrics,
    FBetaCurve,
    IoU,
    threshold_grid,
    threshold_levels,
)

# 2x2 example. Pixels a=0.9 (gt 1), b=0.65 (gt 0), c=0.3 (gt 1), d=0.15 (gt 1).
# floor(255 p) = 229, 165, 76, 38: each pixel is positive at thresholds k/255 for k <= that (no ties).
PRED = torch.tensor([[0.9, 0.65], [0.3, 0.15]])
GT = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
B2 = 0.3


def f_beta(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else (1 + B2) * p * r / (B2 * p + r)


def piecewise(segments: list[tuple[int, int, float]]) -> np.ndarray:
    """Curve over k = 0..255 from (first k, last k, value) segments."""
    out = np.full(256, np.nan)
    for first, last, value in segments:
        out[first : last + 1] = value
    assert not np.isnan(out).any()
    return out


def batch(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return pred[None, None], gt[None, None]


def test_hand_values_blurred_positive():
    # positives per k: k<=38 {a,b,c,d}: TP 3 FP 1; 39..76 {a,b,c}: TP 2 FP 1; 77..165 {a,b}: TP 1 FP 1;
    # 166..229 {a}: TP 1; k>=230 nothing predicted -> P = R = F = 0.  3 positive gt pixels.
    precision = piecewise(
        [(0, 38, 3 / 4), (39, 76, 2 / 3), (77, 165, 1 / 2), (166, 229, 1.0), (230, 255, 0.0)]
    )
    recall = piecewise([(0, 38, 1.0), (39, 76, 2 / 3), (77, 165, 1 / 3), (166, 229, 1 / 3), (230, 255, 0.0)])
    f = np.array([f_beta(p, r) for p, r in zip(precision, recall, strict=True)])
    assert f[0] == pytest.approx(39 / 49)  # 1.3 * 0.75 / (0.225 + 1)
    curve = FBetaCurve()
    curve.update(*batch(PRED, GT))
    out = curve.compute()
    np.testing.assert_allclose(out["precision"].numpy(), precision, atol=1e-12)
    np.testing.assert_allclose(out["recall"].numpy(), recall, atol=1e-12)
    np.testing.assert_allclose(out["f"].numpy(), f, atol=1e-12)
    assert out["max_f"].item() == pytest.approx(39 / 49)
    assert out["max_f_threshold"].item() == 0.0
    assert out["mean_f"].item() == pytest.approx(f.mean())
    assert out["n_images"].item() == 1 and out["n_empty_gt"].item() == 0

    mae = MAE()
    mae.update(*batch(PRED, GT))
    assert mae.compute().item() == pytest.approx((0.1 + 0.65 + 0.7 + 0.85) / 4)

    # mean(pred) = 0.5: factor 1.5 -> threshold 0.75 -> {a}: P 1, R 1/3; factor 2 -> threshold 1 -> nothing
    adaptive = AdaptiveFBeta(factor=1.5)
    adaptive.update(*batch(PRED, GT))
    assert adaptive.compute().item() == pytest.approx(1.3 / 1.9)
    adaptive2 = AdaptiveFBeta(factor=2.0)
    adaptive2.update(*batch(PRED, GT))
    assert adaptive2.compute().item() == 0.0

    # pred > 0.5: {a, b}; gt {a, c, d}: intersection 1, union 4
    iou = IoU()
    iou.update(*batch(PRED, GT))
    assert iou.compute().item() == pytest.approx(1 / 4)


def test_hand_values_infocus_positive():
    # inverted: a'=0.1, b'=0.35, c'=0.7, d'=0.85 (floor 255p' = 25, 89, 178, 216); only b' in focus.
    # k<=25 all: TP 1 FP 3; 26..89 {b',c',d'}: TP 1 FP 2; k>=90 b' not predicted: TP 0 -> F 0.
    precision = piecewise([(0, 25, 1 / 4), (26, 89, 1 / 3), (90, 255, 0.0)])
    recall = piecewise([(0, 25, 1.0), (26, 89, 1.0), (90, 255, 0.0)])
    f = np.array([f_beta(p, r) for p, r in zip(precision, recall, strict=True)])
    metrics = DBDMetrics()
    metrics.update(*batch(PRED, GT))
    out = metrics.compute()
    np.testing.assert_allclose(out["infocus_precision"].numpy(), precision, atol=1e-12)
    np.testing.assert_allclose(out["infocus_recall"].numpy(), recall, atol=1e-12)
    np.testing.assert_allclose(out["infocus_f"].numpy(), f, atol=1e-12)
    assert out["infocus_max_f"].item() == pytest.approx(13 / 33)  # 1.3 / 3 / (0.1 + 1)
    assert out["infocus_max_f_threshold"].item() == pytest.approx(26 / 255)
    assert out["infocus_mean_f"].item() == pytest.approx(f.mean())
    # mean(pred') = 0.5 -> threshold 0.75 -> {d'}, not in focus -> 0
    assert out["infocus_adaptive_f"].item() == 0.0
    # pred' > 0.5: {c', d'}; gt' {b'}: intersection 0
    assert out["infocus_iou"].item() == 0.0
    assert out["infocus_mae"].item() == pytest.approx(out["mae"].item())
    # the blurred-positive keys of the wrapper equal the standalone metrics
    assert out["max_f"].item() == pytest.approx(39 / 49)
    assert out["adaptive_f"].item() == pytest.approx(1.3 / 1.9)
    assert out["iou"].item() == pytest.approx(1 / 4)


def test_edge_cases_empty_gt_and_empty_union():
    pred = torch.tensor([[0.2, 0.4], [0.1, 0.3]])
    gt = torch.zeros(2, 2)
    metrics = DBDMetrics()
    metrics.update(*batch(pred, gt))
    out = metrics.compute()
    # no blurred pixel: recall 0 everywhere -> F 0 at every threshold; counted as an empty-gt image
    assert out["f"].abs().max().item() == 0.0 and out["recall"].abs().max().item() == 0.0
    assert out["adaptive_f"].item() == 0.0 and out["n_empty_gt"].item() == 1
    # nothing above 0.5 and nothing blurred: empty union -> IoU 1 (pysodmetrics would say 0)
    assert out["iou"].item() == 1.0
    assert out["mae"].item() == pytest.approx(0.25)
    # in focus everywhere, pred' = 0.8, 0.6, 0.9, 0.7 all > 0.5 -> IoU 1; at t_0 every pixel: P = R = 1
    assert out["infocus_iou"].item() == pytest.approx(1.0)
    assert out["infocus_f"][0].item() == pytest.approx(1.0)
    assert out["infocus_n_empty_gt"].item() == 0

    iou = IoU(empty_score=0.0)
    iou.update(*batch(pred, gt))
    assert iou.compute().item() == 0.0

    # an all-zero map has adaptive threshold 0: every pixel positive
    adaptive = AdaptiveFBeta()
    adaptive.update(*batch(torch.zeros(2, 2), torch.tensor([[1.0, 0.0], [0.0, 0.0]])))
    assert adaptive.compute().item() == pytest.approx(f_beta(1 / 4, 1.0))


def test_threshold_ties_count_as_positive():
    # pred exactly t_128 = 128/255 (float64): positive at k <= 128, negative from 129; 1.0 positive at t_255
    curve = FBetaCurve()
    curve.update([torch.tensor([[128 / 255, 0.0]], dtype=torch.float64)], [torch.tensor([[1.0, 0.0]])])
    f = curve.compute()["f"]
    assert f[128].item() == 1.0 and f[129].item() == 0.0
    curve = FBetaCurve()
    curve.update([torch.tensor([[1.0, 0.0]])], [torch.tensor([[1.0, 0.0]])])
    assert curve.compute()["f"][255].item() == 1.0
    # IoU binarises strictly: 0.5 is negative in both polarities
    metrics = DBDMetrics()
    metrics.update(*batch(torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0, 0.0]])))
    out = metrics.compute()
    assert out["iou"].item() == 0.0 and out["infocus_iou"].item() == 0.0


@pytest.mark.parametrize("n", [256, 11])
def test_threshold_levels_match_bucketize_exactly(n: int):
    """The fast level computation equals an exact search, also on and one ulp either side of every t_k."""
    torch.manual_seed(0)
    t = threshold_grid(n)
    near = torch.cat([t, torch.nextafter(t, torch.ones_like(t)), torch.nextafter(t, torch.zeros_like(t))])
    pred = torch.cat([near.clamp(0, 1), torch.rand(10000, dtype=torch.float64), torch.rand(10000).double()])
    torch.testing.assert_close(
        threshold_levels(pred, t), torch.bucketize(pred, t, right=True), rtol=0, atol=0
    )


def test_per_image_mean_not_pooled_and_list_input():
    # image 1 (1x2) MAE 0.5; image 2 (2x2) MAE 0: per-image mean 0.25 (pooled pixels would give 1/6)
    preds = [torch.tensor([[0.0, 0.0]]), torch.ones(1, 2, 2)]
    gts = [torch.tensor([[1.0, 0.0]]), torch.ones(2, 2)]
    mae, curve = MAE(), FBetaCurve(thresholds=11)
    mae.update(preds, gts)
    curve.update(preds, gts)
    assert mae.compute().item() == pytest.approx(0.25)
    out = curve.compute()
    assert out["thresholds"].numel() == 11 and out["thresholds"][1].item() == pytest.approx(0.1)
    # image 1: t_0 -> P 1/2 R 1, then nothing predicted -> 0; image 2: P = R = 1 at all thresholds
    assert out["f"][0].item() == pytest.approx((f_beta(0.5, 1.0) + 1.0) / 2)
    assert out["f"][5].item() == pytest.approx(0.5)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_bad_input_is_rejected():
    metric = MAE()
    with pytest.raises(ValueError, match="pred shape"):
        metric.update(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 5))
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        metric.update(torch.randn(1, 1, 4, 4) * 5, torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        metric.update(torch.full((1, 1, 2, 2), float("nan")), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="one channel"):
        metric.update(torch.rand(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))
    with pytest.raises(RuntimeError, match="before any image"):
        FBetaCurve().compute()


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_merge_state_equals_single_pass():
    """States are sums with dist_reduce_fx='sum': merging shards (what DDP sync does) is exact."""
    torch.manual_seed(0)
    preds = [torch.rand(1, 7 + i, 9) for i in range(6)]
    gts = [(torch.rand(1, 7 + i, 9) > 0.5).float() for i in range(6)]
    whole, first, second = DBDMetrics(), DBDMetrics(), DBDMetrics()
    whole.update(preds, gts)
    first.update(preds[:2], gts[:2])
    second.update(preds[2:], gts[2:])
    first.merge_state(second)
    expected, merged = whole.compute(), first.compute()
    assert merged.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(merged[key], value, rtol=0, atol=1e-12)
    for child in (FBetaCurve(), MAE(), AdaptiveFBeta(), IoU()):
        assert child._reductions and all(fn.__name__ == "dim_zero_sum" for fn in child._reductions.values())
    whole.reset()
    with pytest.raises(RuntimeError, match="before any image"):
        whole.compute()


# ---------------------------------------------------------------------------------------------------------
# Agreement with pysodmetrics (an independent implementation). Its conventions and how we line up with them:
# * normalize=False: pred float in [0, 1] (no per-image min-max rescaling), gt bool (= our gt > 0.5).
# * dynamic curves: it quantises q = floor(255 * pred) and counts q >= j for j = 255..0, i.e. its arrays run
#   from threshold 255 down to 0 -> we flip them. floor(255 p) >= j <=> p >= j/255 exactly in real numbers;
#   with float32 inputs the two can only differ if p lies within a float64 ulp of some j/255, impossible
#   because j/255 (0 < j < 255) is never within ~1e-10 of a float32 (or 1 - float32) value.
# * adaptive threshold: min(2 * mean, 1), pred >= thr -> compare with our factor=2.0.
# * IoU: its "binary" mode is pred > 0.5 per image (sample_based) -> ours; empty unions (where it gives 0 and
#   we give 1) do not occur on these maps.
# * averaging: mean over images of per-image values, as ours.
# So the per-image counts are identical and only float summation order differs: tolerance 1e-10.
# ---------------------------------------------------------------------------------------------------------


def random_maps(seed: int, quantised: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    for h, w in [(17, 23), (32, 32), (9, 40), (25, 14), (12, 12), (12, 12)]:
        gt = rng.random((h, w)) < rng.uniform(0.2, 0.8)
        pred = np.clip(0.35 * gt + 0.65 * rng.random((h, w)), 0, 1)
        preds.append(pred)
        gts.append(gt)
    gts[-2][:] = False  # no blurred pixel
    gts[-1][:] = True  # no in-focus pixel
    if quantised:  # mid-bin values: no pixel anywhere near a threshold
        preds = [(np.floor(p * 255).clip(0, 254) + 0.5) / 255 for p in preds]
    return [p.astype(np.float32) for p in preds], gts


def pysod_scores(preds: list[np.ndarray], gts: list[np.ndarray]) -> dict[str, np.ndarray | float]:
    import py_sod_metrics as sod

    evaluator = sod.FmeasureV2(
        metric_handlers={
            "f": sod.FmeasureHandler(with_dynamic=True, with_adaptive=True, beta=B2),
            "p": sod.PrecisionHandler(with_dynamic=True, with_adaptive=False),
            "r": sod.RecallHandler(with_dynamic=True, with_adaptive=False),
            "iou": sod.IOUHandler(
                with_dynamic=False, with_adaptive=False, with_binary=True, sample_based=True
            ),
        }
    )
    mae = sod.MAE()
    for pred, gt in zip(preds, gts, strict=True):
        evaluator.step(pred.astype(np.float64), gt, normalize=False)
        mae.step(pred.astype(np.float64), gt, normalize=False)
    res = evaluator.get_results()
    return {
        "f": res["f"]["dynamic"][::-1],
        "precision": res["p"]["dynamic"][::-1],
        "recall": res["r"]["dynamic"][::-1],
        "adaptive_f": res["f"]["adaptive"],
        "iou": res["iou"]["binary"],
        "mae": mae.get_results()["mae"],
    }


@pytest.mark.parametrize("quantised", [True, False])
def test_agrees_with_pysodmetrics(quantised: bool):
    torch.manual_seed(0)
    preds, gts = random_maps(seed=1 if quantised else 2, quantised=quantised)
    ours = DBDMetrics(adaptive_factor=2.0)
    ours.update([torch.from_numpy(p) for p in preds], [torch.from_numpy(g).float() for g in gts])
    out = ours.compute()
    for prefix, sod_preds, sod_gts in (
        ("", preds, gts),
        ("infocus_", [1.0 - p.astype(np.float64) for p in preds], [~g for g in gts]),
    ):
        ref = pysod_scores(sod_preds, sod_gts)
        for key in ("f", "precision", "recall"):
            np.testing.assert_allclose(
                out[prefix + key].numpy(), ref[key], rtol=0, atol=1e-10, err_msg=prefix + key
            )
        assert out[prefix + "max_f"].item() == pytest.approx(ref["f"].max(), abs=1e-10)
        assert out[prefix + "mean_f"].item() == pytest.approx(ref["f"].mean(), abs=1e-10)
        for key in ("adaptive_f", "iou", "mae"):
            assert out[prefix + key].item() == pytest.approx(float(ref[key]), abs=1e-10), prefix + key
    assert out["n_empty_gt"].item() == 1 and out["infocus_n_empty_gt"].item() == 1


def _ddp_worker(rank: int, world: int, port: int, out_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        preds, gts = _shards()
        metrics = DBDMetrics()
        metrics.update(preds[rank::world], gts[rank::world])
        out = metrics.compute()  # each wrapped metric all-reduces its sum states here
        if rank == 0:
            torch.save(out, out_file)
    finally:
        dist.destroy_process_group()


def _shards() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(3)
    preds = [torch.rand(1, 8, 5 + i, generator=gen) for i in range(5)]
    gts = [(torch.rand(1, 8, 5 + i, generator=gen) > 0.4).float() for i in range(5)]
    return preds, gts


def test_ddp_gloo_sync_equals_single_process(tmp_path):
    """Two real gloo processes, uneven shards (3 + 2 images): compute() after sync = one process on all."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out_file = tmp_path / "ddp.pt"
    # fork: the children inherit the imported modules (spawn would re-import torch: ~10 s on 2 cores)
    context = mp.start_processes(
        _ddp_worker, args=(2, port, str(out_file)), nprocs=2, join=False, start_method="fork"
    )
    deadline = time.monotonic() + 60
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("DDP workers did not finish within 60 s")
    synced = torch.load(out_file, weights_only=True)
    single = DBDMetrics()
    single.update(*_shards())
    for key, value in single.compute().items():
        torch.testing.assert_close(synced[key], value, rtol=0, atol=1e-12)
