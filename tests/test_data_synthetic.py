"""Synthetic defocus generator: seeded, disk PSF, labels that agree with the rendered blur."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dbdgan.data.synthetic import (
    SyntheticOptions,
    disk_blur,
    disk_kernel,
    generate_pair,
    generate_sample,
    sample_rng,
)

SIZE = 64


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_same_seed_same_bytes_and_other_seed_differs() -> None:
    opts = SyntheticOptions()
    first = generate_sample(sample_rng(7, 3), SIZE, opts)
    again = generate_sample(sample_rng(7, 3), SIZE, opts)
    other = generate_sample(sample_rng(8, 3), SIZE, opts)
    assert first.encoded == again.encoded
    assert np.array_equal(first.mask, again.mask)
    assert first.encoded != other.encoded


def test_generate_pair_shapes_and_types() -> None:
    image, mask = generate_pair(np.random.default_rng(0), (48, 80))
    assert image.shape == (48, 80, 3) and image.dtype == np.uint8
    assert mask.shape == (48, 80) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1}


def test_all_sharp_and_all_blurred_masks() -> None:
    sharp = SyntheticOptions(all_sharp_fraction=1.0, all_blurred_fraction=0.0)
    blurred = SyntheticOptions(all_sharp_fraction=0.0, all_blurred_fraction=1.0)
    for index in range(4):
        sample = generate_sample(sample_rng(1, index), SIZE, sharp)
        assert sample.info["scenario"] == "all-sharp" and sample.mask.max() == 0
        assert all(r <= sharp.coc_threshold for r in sample.info["radii"])
        sample = generate_sample(sample_rng(1, index), SIZE, blurred)
        assert sample.info["scenario"] == "all-blurred" and sample.mask.min() == 1
        assert all(r >= blurred.min_blur_radius for r in sample.info["radii"])


def test_mixed_scenes_have_both_labels_and_depth_ordered_radii() -> None:
    opts = SyntheticOptions(all_sharp_fraction=0.0, all_blurred_fraction=0.0, slanted_fraction=0.0)
    both = 0
    for index in range(12):
        sample = generate_sample(sample_rng(2, index), SIZE, opts)
        radii = sample.info["radii"]
        assert any(r <= opts.coc_threshold for r in radii) and any(r >= opts.min_blur_radius for r in radii)
        both += int(0 < sample.mask.mean() < 1)
    assert both >= 8  # occluders can land off-frame or be fully hidden now and then


def _laplacian_energy(grey: np.ndarray) -> np.ndarray:
    lap = np.abs(4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:])
    return np.pad(lap, 1)


def test_labels_agree_with_rendered_sharpness() -> None:
    """Pixels labelled blurred must carry clearly less high-frequency energy than in-focus ones."""
    opts = SyntheticOptions(
        all_sharp_fraction=0.0,
        all_blurred_fraction=0.0,
        noise_std=(0.0, 0.0),
        shot_noise=(0.0, 0.0),
        jpeg_quality=(95, 95),
        min_blur_radius=3.0,
    )
    ratios = []
    for index in range(10):
        sample = generate_sample(sample_rng(3, index), 96, opts)
        energy = _laplacian_energy(sample.image.astype(np.float32).mean(axis=2))
        inner = np.zeros_like(sample.mask, dtype=bool)
        inner[4:-4, 4:-4] = True  # away from the frame
        sharp, blurred = inner & (sample.mask == 0), inner & (sample.mask == 1)
        if sharp.sum() > 200 and blurred.sum() > 200:
            ratios.append(energy[sharp].mean() / max(energy[blurred].mean(), 1e-6))
    assert len(ratios) >= 5
    assert np.median(ratios) > 2.0


def test_disk_kernel_is_a_flat_pillbox_not_a_gaussian() -> None:
    kernel = disk_kernel(5.0)
    assert kernel.shape == (11, 11)
    assert kernel.sum() == pytest.approx(1.0, abs=1e-5)
    centre = kernel[5, 5]
    yy, xx = np.mgrid[-5:6, -5:6]
    inside = np.hypot(yy, xx) <= 4.2  # pixels fully covered by the disk
    assert np.allclose(kernel[inside], centre)  # flat top: a Gaussian would fall off from the centre
    assert kernel[0, 0] == 0.0 and kernel[5, 0] < centre  # hard rim, corners outside
    assert disk_kernel(0.0).shape == (1, 1)


def test_fft_disk_blur_equals_direct_convolution_and_keeps_flat_fields() -> None:
    image = torch.rand(3, 40, 50)
    for radius in (1.0, 2.5, 7.0):
        kernel = torch.from_numpy(disk_kernel(radius).copy())
        half = kernel.shape[0] // 2
        padded = torch.nn.functional.pad(image[:, None], (half, half, half, half), mode="reflect")
        direct = torch.nn.functional.conv2d(padded, kernel.flip(0, 1)[None, None])[:, 0]
        assert torch.allclose(disk_blur(image, radius), direct, atol=1e-5)
    flat = torch.full((3, 20, 24), 0.7)
    assert torch.allclose(disk_blur(flat, 6.0), flat, atol=1e-5)  # reflect padding: no dark border


def test_blurred_occluder_edge_has_no_halo() -> None:
    """Compositing in premultiplied alpha keeps a blurred dark object over a bright background between
    the two colours: no bright or dark ring at the boundary."""
    background = torch.ones(3, 40, 40)
    alpha = torch.zeros(1, 40, 40)
    alpha[:, 10:30, 10:30] = 1.0
    colour = torch.zeros(3, 40, 40)
    stacked = disk_blur(torch.cat([colour * alpha, alpha]), 4.0)
    composite = stacked[:3] + (1 - stacked[3:]) * background
    assert composite.min() >= -1e-5 and composite.max() <= 1 + 1e-5


def test_options_validation_and_from_any() -> None:
    with pytest.raises(ValueError, match="coc_threshold < min_blur_radius"):
        SyntheticOptions(coc_threshold=3.0, min_blur_radius=2.0)
    with pytest.raises(ValueError, match=r"unknown synthetic option\(s\) \['colour'\]"):
        SyntheticOptions.from_any({"colour": 1})
    opts = SyntheticOptions.from_any({"num_images": 5, "jpeg_quality": [80, 90]})
    assert opts.num_images == 5 and opts.jpeg_quality == (80, 90)
    assert SyntheticOptions.from_any(None) == SyntheticOptions()


def test_photo_textures_from_a_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for index in range(2):
        photo = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
        Image.fromarray(photo).save(tmp_path / f"photo{index}.png")
    opts = SyntheticOptions(texture_dir=str(tmp_path), photo_fraction=1.0)
    image, mask = generate_pair(np.random.default_rng(1), SIZE, opts)
    assert image.shape == (SIZE, SIZE, 3) and mask.shape == (SIZE, SIZE)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no images"):
        generate_pair(np.random.default_rng(1), SIZE, SyntheticOptions(texture_dir=str(tmp_path / "empty")))
