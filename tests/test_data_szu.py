"""The `szu` reader on SZU-BD's own release layout (img/out-of-focus/ + gt/, 255 = blurred), on the real sample."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dbdgan.data import manifest
from dbdgan.data.prepare import prepare_dataset
from dbdgan.data.readers import LayoutError, read_source


def test_reads_the_real_sample(shared_szu: Path) -> None:
    pairs = read_source("szu", shared_szu)
    photos = sorted((shared_szu / "img" / "out-of-focus").glob("*.jpg"))
    assert len(pairs) == len(photos) == 50
    assert [p.image for p in pairs] == photos
    for pair in pairs:
        assert pair.id == pair.image.stem and pair.mask == shared_szu / "gt" / f"{pair.image.stem}.png"


def test_prepare_keeps_the_release_polarity(shared_szu: Path, tmp_path: Path) -> None:
    """255 = blurred in the release, as in the project: prepared masks are the release's, not inverted; the
    few anti-aliased masks (grey edges) are thresholded at half scale."""
    out = tmp_path / "szu"
    prepare_dataset("szu", out, input_dir=shared_szu, split={"test": 1.0})
    rows = manifest.read(out)
    assert len(rows) == 50 and {r["split"] for r in rows} == {"test"} and {r["source"] for r in rows} == {"szu"}
    grey = 0
    for row in rows:
        with Image.open(shared_szu / "gt" / f"{row['id']}.png") as gt:
            release = np.asarray(gt.convert("L"))
        grey += int(not np.isin(release, (0, 255)).all())
        prepared = np.asarray(Image.open(out / row["mask"]))
        np.testing.assert_array_equal(prepared, np.where(release >= 128, 255, 0))
        assert float(row["blur_fraction"]) == pytest.approx((release >= 128).mean(), abs=1e-6)
    assert grey == 3  # 105695, 133027, 98431: under 1 % grey pixels each
    # the sample's photos are mostly background blur: a polarity mistake would show as a mean under 0.5
    assert np.mean([float(r["blur_fraction"]) for r in rows]) == pytest.approx(0.76, abs=0.02)


def _photo(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 16, 3), 128, np.uint8)).save(path)


def _mask(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.tile(np.array([0, 255], np.uint8).repeat(8), (12, 1))).save(path)


def _release(root: Path, defocus: list[str], motion: list[str]) -> Path:
    """The full release's layout: every photo in img/, again in img/out-of-focus/ or img/motion/, masks in gt/."""
    for name in defocus:
        _photo(root / "img" / "out-of-focus" / f"{name}.jpg")
    for name in motion:
        _photo(root / "img" / "motion" / f"{name}.jpg")
    for name in defocus + motion:
        _photo(root / "img" / f"{name}.jpg")
        _mask(root / "gt" / f"{name}.png")
    return root


def test_motion_blur_photos_are_skipped_with_a_note(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _release(tmp_path / "SZU-BD", ["0128", "0162"], ["motion_1"])
    with caplog.at_level(logging.INFO, logger="dbdgan.data.readers"):
        pairs = read_source("szu", root)
    assert [p.id for p in pairs] == ["0128", "0162"]
    assert all(p.image.parent == root / "img" / "out-of-focus" for p in pairs)
    assert "skipped 1 mask(s)" in caplog.text and "motion blur" in caplog.text and "motion_1" in caplog.text
    # the same without img/motion/: a photo in img/ but not in img/out-of-focus/ is not a defocus photo either
    for photo in (root / "img" / "motion").iterdir():
        photo.unlink()
    assert [p.id for p in read_source("szu", root)] == ["0128", "0162"]


def test_unmatched_files_and_other_layouts_are_errors(tmp_path: Path) -> None:
    root = _release(tmp_path / "SZU-BD", ["0128", "0162"], [])
    _mask(root / "gt" / "lost.png")  # a mask whose photo is nowhere
    with pytest.raises(LayoutError, match=r"1 mask\(s\) in .*gt have no image in .*out-of-focus: lost\.png"):
        read_source("szu", root)
    (root / "gt" / "lost.png").unlink()
    (root / "gt" / "0162.png").unlink()
    with pytest.raises(LayoutError, match=r"1 image\(s\) in .*out-of-focus have no mask in .*gt: 0162\.jpg"):
        read_source("szu", root)
    old = tmp_path / "repacked"  # the layout the reader used to guess (source/ + gt/): named, with the way out
    _photo(old / "source" / "a.jpg")
    _mask(old / "gt" / "a.png")
    with pytest.raises(LayoutError, match=r"repacked is not in SZU-BD's layout: it needs img/out-of-focus/ .*"
                                          r"data.source=folder"):
        read_source("szu", old)
