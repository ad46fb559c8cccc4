"""Great Expectations validation of prepared datasets: a clean set passes, each kind of breakage is named."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dbdgan.data.checks import MANIFEST_COLUMNS, DataCheckError, validate_dataset

SPLITS = ("train", "val", "test")
MAX_PIXELS = 4_000_000


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_manifest(root: Path, rows: list[dict]) -> None:
    with (root / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _read_manifest(root: Path) -> list[dict]:
    with (root / "manifest.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _row(root: Path, id_: str, split: str, source: str, image: str, mask: str) -> dict:
    """A manifest row computed from the files, as prepare would write it."""
    with Image.open(root / image) as img:
        width, height = img.size
    with Image.open(root / mask) as m:
        values = np.asarray(m)
    values = values if values.ndim == 2 else values[..., 0]
    return {
        "id": id_,
        "split": split,
        "source": source,
        "image": image,
        "mask": mask,
        "width": width,
        "height": height,
        "channels": 3,
        "blur_fraction": f"{np.count_nonzero(values) / values.size:.6f}",
        "image_sha256": _sha(root / image),
        "mask_sha256": _sha(root / mask),
    }


def _rehash(root: Path) -> None:
    """Refresh hashes after a test edits a file, so that only the intended expectation fails."""
    rows = _read_manifest(root)
    for row in rows:
        for kind in ("image", "mask"):
            if (root / row[kind]).is_file():
                row[f"{kind}_sha256"] = _sha(root / row[kind])
    _write_manifest(root, rows)


def make_dataset(root: Path, per_split: int = 2, size: int = 48, seed: int = 0) -> Path:
    """A tiny prepared dataset: textured RGB JPEGs and 0/255 masks (a blurred half-plane) in three splits."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    for split in SPLITS:
        for k in range(per_split):
            id_ = f"{split}{k:03d}"
            pixels = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"images/{id_}.jpg", quality=90)
            mask = np.zeros((size, size + 8), np.uint8)
            mask[:, : 4 + k * 3] = 255
            Image.fromarray(mask).save(root / f"masks/{id_}.png")
            rows.append(_row(root, id_, split, "synthetic", f"images/{id_}.jpg", f"masks/{id_}.png"))
    _write_manifest(root, rows)
    return root


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "prepared")


def _expect_failure(
    data_dir: Path, report_dir: Path, expectation: str, files: list[str], **kwargs
) -> DataCheckError:
    """Validation must fail on `expectation` listing exactly `files`, and the message must name both."""
    with pytest.raises(DataCheckError) as info:
        validate_dataset(data_dir, report_dir, max_pixels=kwargs.pop("max_pixels", MAX_PIXELS), **kwargs)
    err = info.value
    matching = [f for f in err.report.failures if f.expectation.startswith(expectation)]
    names = [f.expectation for f in err.report.failures]
    assert matching, f"{expectation} not among failures {names}"
    assert sorted(matching[0].files) == sorted(files), matching[0]
    message = str(err)
    assert expectation in message
    for name in files:
        assert name in message
    assert json.loads((report_dir / "validation.json").read_text())["success"] is False
    assert (report_dir / "data_docs" / "index.html").is_file()
    return err


def test_clean_dataset_passes_and_writes_reports(dataset: Path, tmp_path: Path) -> None:
    report_dir = tmp_path / "report"
    report = validate_dataset(dataset, report_dir, max_pixels=MAX_PIXELS)
    assert report.success and not report.failures
    assert report.split_counts == {"train": 2, "val": 2, "test": 2}
    assert report.n_rows == report.n_images_on_disk == 6
    summary = json.loads((report_dir / "validation.json").read_text())
    assert summary["success"] is True
    assert summary["evaluated_expectations"] == report.evaluated_expectations > 20
    assert report.summary["success"] is True and report.summary["split_counts"] == report.split_counts
    index = report_dir / "data_docs" / "index.html"
    assert index.is_file() and report.data_docs_index == index
    assert list((report_dir / "data_docs" / "validations").rglob("*.html"))
    # A second run replaces the docs instead of piling up old runs.
    validate_dataset(dataset, report_dir, max_pixels=MAX_PIXELS)
    assert len(list((report_dir / "data_docs" / "validations").rglob("*.html"))) == 1


def test_truncated_jpeg(dataset: Path, tmp_path: Path) -> None:
    path = dataset / "images/train001.jpg"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _rehash(dataset)
    err = _expect_failure(
        dataset,
        tmp_path / "r",
        "expect_column_values_to_be_null(column='image_error')",
        ["images/train001.jpg"],
    )
    assert "truncated" in str(err)


def test_missing_mask(dataset: Path, tmp_path: Path) -> None:
    (dataset / "masks/val000.png").unlink()
    err = _expect_failure(
        dataset, tmp_path / "r", "expect_column_values_to_be_null(column='mask_error')", ["masks/val000.png"]
    )
    assert "file not found" in str(err)


def test_size_mismatch(dataset: Path, tmp_path: Path) -> None:
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(dataset / "masks/test001.png")
    _rehash(dataset)
    _expect_failure(
        dataset,
        tmp_path / "r",
        "expect_column_pair_values_to_be_equal(mask_width == image_width)",
        ["masks/test001.png"],
    )


def test_non_binary_mask(dataset: Path, tmp_path: Path) -> None:
    mask = np.zeros((48, 56), np.uint8)
    mask[:, :10] = 128
    Image.fromarray(mask).save(dataset / "masks/train000.png")
    _rehash(dataset)
    err = _expect_failure(
        dataset,
        tmp_path / "r",
        "expect_column_values_to_be_null(column='mask_non_binary')",
        ["masks/train000.png"],
    )
    assert "mask is not binary: values 0, 128" in str(err)


def test_greyscale_image(dataset: Path, tmp_path: Path) -> None:
    Image.new("L", (56, 48), 90).save(dataset / "images/val001.jpg")
    _rehash(dataset)
    err = _expect_failure(
        dataset,
        tmp_path / "r",
        "expect_column_values_to_be_in_set(column='image_mode'",
        ["images/val001.jpg"],
    )
    assert "image_mode=L" in str(err)


def test_duplicate_image_across_splits(dataset: Path, tmp_path: Path) -> None:
    shutil.copyfile(dataset / "images/train000.jpg", dataset / "images/test000.jpg")
    _rehash(dataset)
    _expect_failure(
        dataset,
        tmp_path / "r",
        "expect_column_values_to_be_null(column='same_image_in_other_splits')",
        ["images/train000.jpg", "images/test000.jpg"],
    )


def test_duplicate_within_split_is_only_a_warning(dataset: Path, tmp_path: Path) -> None:
    shutil.copyfile(dataset / "images/train000.jpg", dataset / "images/train001.jpg")
    _rehash(dataset)
    report = validate_dataset(dataset, tmp_path / "r", max_pixels=MAX_PIXELS)
    assert report.success
    assert [sorted(w.files) for w in report.warnings] == [["images/train000.jpg", "images/train001.jpg"]]


def test_empty_split(dataset: Path, tmp_path: Path) -> None:
    rows = _read_manifest(dataset)
    for row in rows:
        if row["split"] == "test":
            (dataset / row["image"]).unlink()
    _write_manifest(dataset, [r for r in rows if r["split"] != "test"])
    err = _expect_failure(
        dataset, tmp_path / "r", "expect_column_distinct_values_to_contain_set(column='split'", []
    )
    assert "no rows in split(s) ['test']" in str(err)
    assert len(err.report.failures) == 1


def test_manifest_count_mismatch(dataset: Path, tmp_path: Path) -> None:
    shutil.copyfile(dataset / "images/val000.jpg", dataset / "images/stray.jpg")
    err = _expect_failure(
        dataset, tmp_path / "r", "expect_table_row_count_to_equal(value=7)", ["images/stray.jpg"]
    )
    assert "on disk but not in the manifest" in str(err)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that claims width x height pixels but carries no pixel data: a cheap decompression bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_decompression_bombs_are_failing_facts_not_crashes(dataset: Path, tmp_path: Path) -> None:
    _png_header_only(dataset / "images/train000.jpg", 10_000, 10_000)  # above max_pixels: our guard
    _png_header_only(dataset / "images/val000.jpg", 100_000, 100_000)  # above 2x PIL's limit: PIL's error
    _rehash(dataset)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        err = _expect_failure(
            dataset,
            tmp_path / "r",
            "expect_column_values_to_be_null(column='image_error')",
            ["images/train000.jpg", "images/val000.jpg"],
            max_pixels=50_000_000,
        )
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert "10000x10000 = 100000000 pixels > max_pixels=50000000" in str(err)
    assert "decompression bomb refused by PIL's pixel limit" in str(err)


def test_small_images_fail_min_size(dataset: Path, tmp_path: Path) -> None:
    _expect_failure(
        dataset,
        tmp_path / "r",
        "expect_column_values_to_be_between(column='image_height'",
        [r["image"] for r in _read_manifest(dataset)],
        min_size=50,
    )


def test_missing_manifest_or_columns(tmp_path: Path) -> None:
    with pytest.raises(DataCheckError, match="no manifest"):
        validate_dataset(tmp_path, tmp_path / "r", max_pixels=MAX_PIXELS)
    (tmp_path / "manifest.csv").write_text("id,split\na,train\n")
    with pytest.raises(DataCheckError, match=r"missing column\(s\) \['source'"):
        validate_dataset(tmp_path, tmp_path / "r", max_pixels=MAX_PIXELS)
    assert json.loads((tmp_path / "r/validation.json").read_text())["success"] is False


def test_clean_cuhk_subset_passes(shared_cuhk: Path, tmp_path: Path) -> None:
    """~50 real CUHK pairs (spread over the set, all RGBA masks included) pass as a prepared dataset.

    Symlinked, not copied, to stay fast; the full 604-pair run is in the pipeline (`dbdgan validate`).
    """
    root = tmp_path / "cuhk"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    images = sorted((shared_cuhk / "images").iterdir())
    rgba = []
    for img in images:
        with Image.open(shared_cuhk / "masks" / f"{img.stem}.png") as mask:
            if mask.mode != "L":
                rgba.append(img)
    chosen = sorted(set(images[:: max(1, len(images) // 40)]) | set(rgba))
    rows = []
    for k, img in enumerate(chosen):
        (root / "images" / img.name).symlink_to(img)
        (root / "masks" / f"{img.stem}.png").symlink_to(shared_cuhk / "masks" / f"{img.stem}.png")
        rows.append(
            _row(root, img.stem, SPLITS[k % 3], "cuhk", f"images/{img.name}", f"masks/{img.stem}.png")
        )
    _write_manifest(root, rows)
    report = validate_dataset(root, tmp_path / "report", max_pixels=MAX_PIXELS)
    assert report.success, report.message()
    assert report.n_rows == len(chosen) >= 40


def test_validation_and_training_read_masks_by_one_rule(dataset: Path, tmp_path: Path) -> None:
    """What validation accepts, training reads as validated; what it rejects, training refuses for the
    same reason: both go through dbdgan.data.imageio (report mode here, load_mask there)."""
    from dbdgan.data.dataset import DBDDataset
    from dbdgan.data.imageio import ImageError

    labels = np.asarray(Image.open(dataset / "masks/train000.png")) // 255
    Image.fromarray(labels.astype(np.uint8)).save(dataset / "masks/train000.png")  # 0/1, not 0/255
    _rehash(dataset)
    assert validate_dataset(dataset, tmp_path / "ok", max_pixels=MAX_PIXELS).success
    sample = DBDDataset(dataset, "train", size=None, augment=False)[0]
    assert sample["id"] == "train000" and (sample["mask"][0].numpy() == labels).all()

    Image.fromarray((labels * 128).astype(np.uint8)).save(dataset / "masks/train000.png")
    _rehash(dataset)
    err = _expect_failure(
        dataset, tmp_path / "bad", "expect_column_values_to_be_null(column='mask_non_binary')", ["masks/train000.png"]
    )
    with pytest.raises(ImageError, match="mask is not binary: values 0, 128") as refused:
        DBDDataset(dataset, "train", size=None, augment=False)[0]
    assert refused.value.reason.split(" (")[0] in str(err)
