"""imageio: every bad file is an ImageError naming it; masks come out as {0, 1} with 1 = blurred; report mode
(inspect_image / inspect_mask) returns the same verdicts as facts."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dbdgan.data.imageio import ImageError, inspect_image, inspect_mask, load_mask, load_rgb


def _save(path: Path, array: np.ndarray, mode: str | None = None, **kwargs) -> Path:
    image = Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    image.save(path, **kwargs)
    return path


def _noise_rgb(size: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_load_rgb_reads_jpeg(tmp_path: Path) -> None:
    path = _save(tmp_path / "a.jpg", _noise_rgb(), quality=95)
    image = load_rgb(path)
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8


def test_truncated_jpeg_is_an_image_error(tmp_path: Path) -> None:
    path = _save(tmp_path / "full.jpg", _noise_rgb(128), quality=95)
    data = path.read_bytes()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"broken\.jpg.*truncated"):
        load_rgb(broken)


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    path = _save(tmp_path / "bomb.png", np.zeros((100, 100, 3), dtype=np.uint8))
    with pytest.raises(ImageError, match=r"bomb\.png.*decompression bomb.*max_pixels=5000"):
        load_rgb(path, max_pixels=5000)
    with pytest.raises(ImageError, match="bomb"):
        load_mask(path, max_pixels=5000)
    assert load_rgb(path, max_pixels=10_000).shape == (100, 100, 3)


def test_missing_and_garbage_files(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"nothere\.jpg: file not found"):
        load_rgb(tmp_path / "nothere.jpg")
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image at all")
    with pytest.raises(ImageError, match=r"garbage\.jpg: not a readable image"):
        load_rgb(garbage)


def test_greyscale_and_16bit_images_become_rgb(tmp_path: Path) -> None:
    grey = np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)
    rgb = load_rgb(_save(tmp_path / "grey.png", grey))
    assert rgb.shape == (64, 64, 3) and (rgb == grey[:, :, None]).all()

    wide = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # up to 65520: true 16-bit data
    path = tmp_path / "wide.png"
    Image.fromarray(wide).save(path)
    rgb16 = load_rgb(path)
    expected = np.rint(wide / 257.0).astype(np.uint8)
    assert rgb16.shape == (64, 64, 3)
    assert np.abs(rgb16[:, :, 0].astype(int) - expected).max() <= 1  # rescaled, not clipped at 255
    assert rgb16.max() > 250 and rgb16[0, 1, 0] < 5


def test_rgba_image_drops_alpha(tmp_path: Path) -> None:
    rgba = np.dstack([_noise_rgb(32), np.full((32, 32), 7, np.uint8)])
    assert (load_rgb(_save(tmp_path / "rgba.png", rgba)) == rgba[:, :, :3]).all()


def _binary(size: int = 32) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[:, size // 2 :] = 1
    return mask


def test_greyscale_mask_and_polarity(tmp_path: Path) -> None:
    path = _save(tmp_path / "m.png", _binary() * 255)
    assert (load_mask(path) == _binary()).all()
    assert (load_mask(path, polarity="sharp-white") == 1 - _binary()).all()
    with pytest.raises(ValueError, match="polarity"):
        load_mask(path, polarity="white")


def test_rgba_mask_with_identical_channels(tmp_path: Path) -> None:
    grey = _binary() * 255
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    assert (load_mask(_save(tmp_path / "rgba.png", rgba)) == _binary()).all()
    rgb = np.dstack([grey, grey, grey])
    assert (load_mask(_save(tmp_path / "rgb.png", rgb)) == _binary()).all()


def test_mask_label_in_alpha_channel(tmp_path: Path) -> None:
    alpha = _binary() * 255
    rgba = np.dstack([np.zeros_like(alpha)] * 3 + [alpha])
    assert (load_mask(_save(tmp_path / "alpha.png", rgba)) == _binary()).all()


def test_colour_mask_needs_binarize(tmp_path: Path) -> None:
    grey = _binary() * 255
    colour = np.dstack([grey, grey // 2, np.zeros_like(grey)])
    path = _save(tmp_path / "colour.png", colour)
    with pytest.raises(ImageError, match=r"colour\.png.*differing colour channels"):
        load_mask(path)
    assert (load_mask(path, binarize=True) == _binary()).all()


def test_non_binary_mask(tmp_path: Path) -> None:
    soft = (_binary() * 200 + 20).astype(np.uint8)
    path = _save(tmp_path / "soft.png", soft)
    with pytest.raises(ImageError, match=r"soft\.png: mask is not binary: values 20, 220"):
        load_mask(path)
    assert (load_mask(path, binarize=True) == _binary()).all()


def test_16bit_1bit_palette_and_01_masks(tmp_path: Path) -> None:
    target = _binary()
    wide = tmp_path / "wide.png"
    Image.fromarray(target.astype(np.uint16) * 65535).save(wide)
    assert (load_mask(wide) == target).all()
    assert (load_mask(_save(tmp_path / "one.png", target * 255, mode="1")) == target).all()
    assert (load_mask(_save(tmp_path / "pal.png", target * 255, mode="P")) == target).all()
    assert (load_mask(_save(tmp_path / "zero_one.png", target)) == target).all()


def test_lossy_mask_can_be_binarized(tmp_path: Path) -> None:
    yy, xx = np.mgrid[:64, :64]
    disk = ((yy - 30) ** 2 + (xx - 33) ** 2 < 20**2).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(disk * 255).save(buffer, format="JPEG", quality=60)
    path = tmp_path / "mask.jpg"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ImageError, match="not binary"):
        load_mask(path)
    assert (load_mask(path, binarize=True) == disk).mean() > 0.99


# ---------------------------------------------------------------- report mode (what validation reads with)


def _masks(tmp_path: Path) -> list[Path]:
    """Masks of every kind the rules tell apart: usable ones and ones load_mask refuses."""
    grey = _binary() * 255
    wide = tmp_path / "wide.png"
    Image.fromarray(_binary().astype(np.uint16) * 65535).save(wide)
    return [
        _save(tmp_path / "grey.png", grey),
        _save(tmp_path / "zero_one.png", _binary()),
        _save(tmp_path / "one.png", grey, mode="1"),
        _save(tmp_path / "pal.png", grey, mode="P"),
        _save(tmp_path / "rgba.png", np.dstack([grey, grey, grey, np.full_like(grey, 255)])),
        _save(tmp_path / "alpha.png", np.dstack([np.zeros_like(grey)] * 3 + [grey])),
        wide,
        _save(tmp_path / "soft.png", (_binary() * 200 + 20).astype(np.uint8)),
        _save(tmp_path / "colour.png", np.dstack([grey, grey // 2, np.zeros_like(grey)])),
        _save(tmp_path / "cmyk.jpg", np.dstack([grey, grey, grey]), mode="CMYK"),
    ]


def test_inspect_mask_judges_every_mask_as_load_mask_does(tmp_path: Path) -> None:
    """Report mode is load_mask's rule, not a copy of it: the same masks pass, with the same labels."""
    for path in _masks(tmp_path):
        report = inspect_mask(path)
        assert report.error is None and report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert (report.width, report.height) == (32, 32), path
        try:
            labels = load_mask(path)
        except ImageError as exc:
            assert not report.ok and report.label_error and report.label_error in exc.reason, path
            assert report.blur_fraction is None
        else:
            assert report.ok and report.label_error is None, (path, report)
            assert report.blur_fraction == float(labels.mean()) == 0.5, path


def test_inspect_mask_reports_the_reason_without_the_binarize_advice(tmp_path: Path) -> None:
    soft, colour, cmyk = _masks(tmp_path)[-3:]
    assert inspect_mask(soft).label_error == "mask is not binary: values 20, 220"
    assert inspect_mask(colour).label_error == "RGB mask with differing colour channels"
    assert inspect_mask(cmyk).label_error == "unsupported mask mode 'CMYK'"
    with pytest.raises(ValueError, match="polarity"):
        inspect_mask(soft, polarity="white")


def test_inspect_image_reports_instead_of_raising(tmp_path: Path) -> None:
    good = _save(tmp_path / "a.jpg", _noise_rgb(64), quality=95)
    report = inspect_image(good)
    assert report.ok and (report.mode, report.width, report.height) == ("RGB", 64, 64)
    assert report.sha256 == hashlib.sha256(good.read_bytes()).hexdigest()

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image at all")
    bomb = _save(tmp_path / "bomb.png", np.zeros((100, 100, 3), dtype=np.uint8))
    for path, max_pixels in ((broken, 10**6), (garbage, 10**6), (bomb, 5000), (tmp_path / "nothere.jpg", 10**6)):
        with pytest.raises(ImageError) as raised:
            load_rgb(path, max_pixels)
        report = inspect_image(path, max_pixels)  # the same check, as a fact: the same reason
        assert not report.ok and report.error == raised.value.reason, path
        assert report.mode is None and report.width is None
        assert (report.sha256 is None) == (path.name == "nothere.jpg")
    assert inspect_image(broken).error.startswith("truncated or corrupt image data")
    assert inspect_image(tmp_path).error.startswith("unreadable file")  # a folder where a file should be
