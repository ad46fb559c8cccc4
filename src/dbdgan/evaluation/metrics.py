"""Defocus-blur-detection accuracy metrics, streamed per image (torchmetrics, DDP-syncable).

Conventions shared by every metric here (they are what the DBD/SOD literature means, made exact):

* Inputs are one prediction map and one ground truth per image, **at the same (native) size**; resizing the
  prediction is the caller's job (``evaluate.py`` resizes bilinearly to the ground truth's resolution).
  ``update(pred, gt)`` takes a tensor ``[B, 1, H, W]`` / ``[B, H, W]`` or a list of per-image tensors
  (``[1, H, W]`` or ``[H, W]``, sizes may differ between images).
* ``pred`` holds probabilities in [0, 1] (not logits: a value outside [0, 1] raises ``ValueError``).
  Every comparison is done in float64.
* ``gt`` is binarised as ``gt > 0.5`` (a bool ``gt`` is taken as is); positive = blurred (label 1).
  ``DBDMetrics`` also scores the inverted polarity (in focus positive): ``pred -> 1 - pred`` and
  ``gt -> not (gt > 0.5)``.
* Every score is computed **per image, then averaged over images** (each image weighs the same whatever its
  size), never pooled over the pixels of the dataset.
* Precision = TP / (TP + FP), defined as 0 when nothing is predicted positive; recall = TP / (TP + FN),
  defined as 0 when the ground truth has no positive pixel; F_beta = (1 + b2) P R / (b2 P + R), defined as
  0 when P + R = 0. So an image whose ground truth has no positive pixel scores F = 0 at every threshold
  (the pysodmetrics convention); ``FBetaCurve`` counts such images in ``n_empty_gt`` so a report can say so.

Every state is a sum with ``dist_reduce_fx="sum"``, so ``compute()`` under DistributedDataParallel (or
``merge_state``) gives exactly the single-process result.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.wrappers.abstract import WrapperMetric

MapBatch = Tensor | Sequence[Tensor]


def _as_2d(t: Tensor, name: str, index: int) -> Tensor:
    if t.dim() == 3 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 2:
        raise ValueError(f"{name}[{index}] must be [1, H, W] or [H, W], got shape {tuple(t.shape)}")
    return t


def _split(batch: MapBatch, name: str) -> list[Tensor]:
    if isinstance(batch, Tensor):
        if batch.dim() == 4:
            if batch.shape[1] != 1:
                raise ValueError(
                    f"{name} must have one channel ([B, 1, H, W]), got shape {tuple(batch.shape)}"
                )
            batch = batch[:, 0]
        if batch.dim() != 3:
            raise ValueError(f"{name} must be [B, 1, H, W] or [B, H, W], got shape {tuple(batch.shape)}")
        return list(batch.unbind(0))
    return [_as_2d(t, name, i) for i, t in enumerate(batch)]


def iter_pairs(
    pred: MapBatch, gt: MapBatch, device: torch.device | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (pred float64 [H, W] in [0, 1], gt bool [H, W]) per image, validating shapes and range."""
    preds, gts = _split(pred, "pred"), _split(gt, "gt")
    if len(preds) != len(gts):
        raise ValueError(f"pred has {len(preds)} images but gt has {len(gts)}")
    for i, (p, g) in enumerate(zip(preds, gts, strict=True)):
        if p.shape != g.shape:
            raise ValueError(
                f"image {i}: pred shape {tuple(p.shape)} != gt shape {tuple(g.shape)}; "
                "resize the prediction to the ground truth's native size first"
            )
        if p.numel() == 0:
            raise ValueError(f"image {i}: empty map of shape {tuple(p.shape)}")
        p = p.detach().to(device=device, dtype=torch.float64)
        low, high = torch.aminmax(p)
        if not (low >= 0 and high <= 1):  # also false for NaN
            raise ValueError(
                f"image {i}: pred must be probabilities in [0, 1] (apply sigmoid to logits), "
                f"got min {low.item():.4g}, max {high.item():.4g}"
            )
        g = g.detach().to(device)
        yield p, g if g.dtype == torch.bool else g > 0.5


def threshold_grid(n: int, device: torch.device | None = None) -> Tensor:
    """t_k = k / (n - 1) for k = 0..n-1 in float64 (n = 256 -> k / 255, the 8-bit grey levels)."""
    if n < 2:
        raise ValueError(f"thresholds must be >= 2, got {n}")
    return torch.arange(n, dtype=torch.float64, device=device) / (n - 1)


def _prf(tp: Tensor, n_pred: Tensor, n_pos: Tensor, beta2: float) -> tuple[Tensor, Tensor, Tensor]:
    """Precision, recall, F_beta from counts with the 0-conventions in the module docstring."""
    tp, n_pred, n_pos = tp.double(), n_pred.double(), torch.as_tensor(n_pos, dtype=torch.float64)
    precision = torch.where(n_pred > 0, tp / n_pred.clamp_min(1), torch.zeros_like(tp))
    recall = tp / n_pos if n_pos > 0 else torch.zeros_like(tp)
    denom = beta2 * precision + recall
    f = torch.where(
        denom > 0, (1 + beta2) * precision * recall / denom.clamp_min(1e-300), torch.zeros_like(tp)
    )
    return precision, recall, f


def threshold_levels(pred: Tensor, thresholds: Tensor) -> Tensor:
    """Number of thresholds <= pred, per pixel (so the pixel is positive at t_k iff level > k).

    Same result as ``torch.bucketize(pred, thresholds, right=True)`` for the uniform grid of
    ``threshold_grid``, ~5x faster: guess floor(pred * (n - 1)), then fix the rare off-by-one that float
    rounding of that product can cause by comparing with the exact thresholds.
    """
    top = thresholds.numel() - 1
    k = (pred * top).floor_().long().clamp_(0, top)  # index of the largest threshold <= pred, give or take 1
    k -= (pred < thresholds[k]).long()
    k += (pred >= thresholds[(k + 1).clamp_(max=top)]).long() * (k < top).long()
    return k + 1


def image_fbeta_curve(
    pred: Tensor, gt: Tensor, thresholds: Tensor, beta2: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-threshold precision, recall, F of one image; pixel positive at t_k iff pred >= t_k.

    One level computation + one histogram instead of len(thresholds) comparisons; exact in float64.
    """
    n = thresholds.numel()
    level = threshold_levels(pred.reshape(-1), thresholds)
    # one histogram of (gt, level) pairs: row 0 = negative-gt pixels, row 1 = positive-gt pixels
    hist = torch.bincount(level + gt.reshape(-1).long() * (n + 1), minlength=2 * (n + 1)).view(2, n + 1)
    hist_pos, hist_all = hist[1], hist.sum(0)
    tp = hist_pos.flip(0).cumsum(0).flip(0)[1:]  # tp[k] = #positive-gt pixels with level >= k + 1
    n_pred = hist_all.flip(0).cumsum(0).flip(0)[1:]
    return _prf(tp, n_pred, gt.sum(), beta2)


def adaptive_threshold(pred: Tensor, factor: float) -> Tensor:
    """min(factor * mean(pred), 1): the per-image adaptive threshold (factor 1.5 in DBD, 2 in SOD)."""
    return torch.clamp(factor * pred.mean(), max=1.0)


class _PerImageMetric(Metric):
    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: MapBatch, gt: MapBatch) -> None:
        for p, g in iter_pairs(pred, gt, self.device):
            self._update_image(p, g)
            self.count += 1

    def _update_image(self, pred: Tensor, gt: Tensor) -> None:
        raise NotImplementedError

    def _mean(self, total: Tensor) -> Tensor:
        if self.count == 0:
            raise RuntimeError(f"{type(self).__name__}.compute() called before any image was scored")
        return total / self.count


class MAE(_PerImageMetric):
    """Mean absolute error: mean over images of (mean over pixels of |pred - (gt > 0.5)|). Lower is better."""

    higher_is_better = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def _update_image(self, pred: Tensor, gt: Tensor) -> None:
        self.total += (pred - gt.double()).abs().mean()

    def compute(self) -> Tensor:
        return self._mean(self.total)


class FBetaCurve(_PerImageMetric):
    """F_beta, precision and recall at ``thresholds`` fixed thresholds, per image then averaged over images.

    Threshold t_k = k / (thresholds - 1) (k / 255 for the default 256); a pixel is predicted positive at t_k
    iff pred >= t_k (so t_0 = 0 marks every pixel positive, and t_255 = 1 only pixels equal to 1).
    For every image the curves P_k, R_k, F_k are computed with the module's 0-conventions; the dataset curves
    are their means over images (also for the PR curve: mean precision vs mean recall at each t_k).
    ``compute()`` returns ``thresholds``, ``precision``, ``recall``, ``f`` (each [thresholds]),
    ``max_f`` = max_k mean F_k, ``max_f_threshold`` = the t_k attaining it (the lowest on ties),
    ``mean_f`` = mean_k mean F_k, ``n_images`` and ``n_empty_gt`` (images without any positive gt pixel).
    """

    higher_is_better = True

    def __init__(self, thresholds: int = 256, beta2: float = 0.3, **kwargs) -> None:
        super().__init__(**kwargs)
        if beta2 <= 0:
            raise ValueError(f"beta2 must be > 0, got {beta2}")
        self.beta2 = beta2
        self.n_thresholds = threshold_grid(thresholds).numel()
        for name in ("precision_sum", "recall_sum", "f_sum"):
            self.add_state(name, default=torch.zeros(thresholds, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("empty_gt", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def _update_image(self, pred: Tensor, gt: Tensor) -> None:
        p, r, f = image_fbeta_curve(pred, gt, threshold_grid(self.n_thresholds, pred.device), self.beta2)
        self.precision_sum += p
        self.recall_sum += r
        self.f_sum += f
        self.empty_gt += float(not gt.any())

    def compute(self) -> dict[str, Tensor]:
        f = self._mean(self.f_sum)
        best = int(torch.argmax(f))
        thresholds = threshold_grid(self.n_thresholds, f.device)
        return {
            "thresholds": thresholds,
            "precision": self._mean(self.precision_sum),
            "recall": self._mean(self.recall_sum),
            "f": f,
            "max_f": f[best],
            "max_f_threshold": thresholds[best],
            "mean_f": f.mean(),
            "n_images": self.count.clone(),
            "n_empty_gt": self.empty_gt.clone(),
        }


class AdaptiveFBeta(_PerImageMetric):
    """F_beta at a per-image adaptive threshold, averaged over images.

    Threshold = min(factor * mean(pred), 1) over the image's pixels; positive iff pred >= threshold (so an
    all-zero map has threshold 0 and marks every pixel positive). factor 1.5 is the DBD convention, 2.0 the
    SOD / pysodmetrics one. P, R, F use the module's 0-conventions.
    """

    higher_is_better = True

    def __init__(self, factor: float = 1.5, beta2: float = 0.3, **kwargs) -> None:
        super().__init__(**kwargs)
        if factor <= 0 or beta2 <= 0:
            raise ValueError(f"factor and beta2 must be > 0, got factor={factor}, beta2={beta2}")
        self.factor, self.beta2 = factor, beta2
        self.add_state("f_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def _update_image(self, pred: Tensor, gt: Tensor) -> None:
        binary = pred >= adaptive_threshold(pred, self.factor)
        self.f_sum += _prf((binary & gt).sum(), binary.sum(), gt.sum(), self.beta2)[2]

    def compute(self) -> Tensor:
        return self._mean(self.f_sum)


class IoU(_PerImageMetric):
    """Intersection over union of (pred > threshold) and gt, per image then averaged over images.

    Strictly greater, as pysodmetrics and torchmetrics binarise (a 0.5 pixel, i.e. logit 0, is negative in
    both polarities). When the union is empty (no positive in gt nor prediction) the image scores
    ``empty_score`` (default 1.0: the prediction is exactly right; pysodmetrics scores 0 there).
    """

    higher_is_better = True

    def __init__(self, threshold: float = 0.5, empty_score: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.threshold, self.empty_score = threshold, empty_score
        self.add_state("iou_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def _update_image(self, pred: Tensor, gt: Tensor) -> None:
        binary = pred > self.threshold
        union = (binary | gt).sum()
        inter = (binary & gt).sum()
        self.iou_sum += inter.double() / union if union > 0 else self.empty_score

    def compute(self) -> Tensor:
        return self._mean(self.iou_sum)


INFOCUS_PREFIX = "infocus_"


class DBDMetrics(WrapperMetric):
    """Every metric above for both polarities: blurred positive (plain keys) and in focus positive
    (keys prefixed ``infocus_``, computed on 1 - pred against not gt).

    ``compute()`` returns a flat dict of tensors: scalars ``max_f``, ``max_f_threshold``, ``mean_f``,
    ``adaptive_f``, ``mae``, ``iou``, ``n_images``, ``n_empty_gt`` and curves ``thresholds``, ``precision``,
    ``recall``, ``f``, each also with the ``infocus_`` prefix. MAE is the same in both polarities by
    construction; it is reported twice so either set of keys is complete.
    The wrapped metrics sync themselves under DDP (Metric ``**kwargs`` such as ``process_group`` go to
    them); use ``update``/``compute``/``reset`` (no ``forward``).
    """

    def __init__(
        self,
        thresholds: int = 256,
        beta2: float = 0.3,
        adaptive_factor: float = 1.5,
        iou_threshold: float = 0.5,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)

        def group() -> nn.ModuleDict:
            return nn.ModuleDict(
                {
                    "curve": FBetaCurve(thresholds=thresholds, beta2=beta2, **kwargs),
                    "adaptive_f": AdaptiveFBeta(factor=adaptive_factor, beta2=beta2, **kwargs),
                    "mae": MAE(**kwargs),
                    "iou": IoU(threshold=iou_threshold, **kwargs),
                }
            )

        self.polarities = nn.ModuleDict({"blurred": group(), "infocus": group()})

    def update(self, pred: MapBatch, gt: MapBatch) -> None:
        pairs = list(iter_pairs(pred, gt))
        blurred = ([p for p, _ in pairs], [g for _, g in pairs])
        infocus = ([1.0 - p for p, _ in pairs], [~g for _, g in pairs])
        for name, (p, g) in (("blurred", blurred), ("infocus", infocus)):
            for metric in self.polarities[name].values():
                metric.update(p, g)

    def compute(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for name, group in self.polarities.items():
            prefix = "" if name == "blurred" else INFOCUS_PREFIX
            values = dict(group["curve"].compute())
            values.update({key: group[key].compute() for key in ("adaptive_f", "mae", "iou")})
            out.update({prefix + key: value for key, value in values.items()})
        return out

    def reset(self) -> None:
        for group in self.polarities.values():
            for metric in group.values():
                metric.reset()
        super().reset()

    def merge_state(self, incoming_state: DBDMetrics) -> None:  # type: ignore[override]
        """Add another DBDMetrics' images to this one (e.g. shards scored by separate workers)."""
        if not isinstance(incoming_state, DBDMetrics):
            raise ValueError(f"can only merge a DBDMetrics, got {type(incoming_state).__name__}")
        for name, group in self.polarities.items():
            for key, metric in group.items():
                metric.merge_state(incoming_state.polarities[name][key])
