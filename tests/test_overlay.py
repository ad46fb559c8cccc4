"""Overlays read on any subject: blurred regions greyed, the p = 0.5 contour outlined, a legend (issue 26:
a plain red tint was ambiguous on red subjects and had no legend)."""

from __future__ import annotations

import numpy as np

from dbdgan.predict import OVERLAY_LEGEND_MIN_WIDTH, OVERLAY_OUTLINE, _legend_patch, overlay


def _red_photo(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A red subject, its left half blurred (map 255), its right half sharp (0)."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[..., 0] = 220
    blur = np.zeros((height, width), dtype=np.uint8)
    blur[:, : width // 2] = 255
    return image, blur


def test_blurred_red_is_greyed_sharp_red_is_kept_and_the_edge_is_outlined():
    image, blur = _red_photo(60, 80)
    out = overlay(image, blur)
    assert out.shape == image.shape and out.dtype == np.uint8
    blurred = out[10:50, 5:30].astype(int)
    assert np.all(np.abs(blurred[..., 0] - blurred[..., 1]) < 90)  # far less red than the 220-vs-0 photo
    assert blurred[..., 0].mean() < image[..., 0].mean()  # and dimmed
    assert (out[10:50, 45:75] == image[10:50, 45:75]).all()  # the sharp half is the photo
    for x in (39, 40):  # both sides of the boundary
        assert (out[20, x] == OVERLAY_OUTLINE).all()
    assert not (out[20, 20] == OVERLAY_OUTLINE).all()
    assert out[:, 0].tolist() == out[:, 1].tolist()  # no legend on a narrow photo: it would cover it


def test_a_wide_overlay_carries_the_legend_in_its_corner():
    image, blur = _red_photo(120, OVERLAY_LEGEND_MIN_WIDTH)
    out = overlay(image, blur)
    legend = _legend_patch()
    h, w = legend.shape[:2]
    assert (out[-h:, :w] == legend).all()
    assert (legend > 200).all(axis=2).sum() > 50  # white text on it
    assert (legend == OVERLAY_OUTLINE).all(axis=2).any()  # and the line it explains
