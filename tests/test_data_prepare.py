"""prepare_dataset: manifest, files, hashes, seeded stratified split, readers and their errors."""

from __future__ import annotations

import csv
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dbdgan.data import manifest
from dbdgan.data.imageio import ImageError
from dbdgan.data.prepare import prepare_dataset, stratified_split
from dbdgan.data.readers import LayoutError, read_source

SYNTH = {"num_images": 24, "size": 64}


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prep") / "synthetic"
    prepare_dataset("synthetic", out, seed=3, synthetic=SYNTH)
    return out


def _rows(data_dir: Path) -> list[dict[str, str]]:
    with (data_dir / "manifest.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_synthetic_manifest_files_and_hashes(synthetic_dir: Path) -> None:
    with (synthetic_dir / "manifest.csv").open(newline="") as handle:
        assert tuple(next(csv.reader(handle))) == manifest.COLUMNS
    rows = _rows(synthetic_dir)
    assert len(rows) == 24 and len({r["id"] for r in rows}) == 24
    assert (synthetic_dir / "contact_sheet.png").stat().st_size > 1000
    for row in rows:
        image_bytes = (synthetic_dir / row["image"]).read_bytes()
        mask_bytes = (synthetic_dir / row["mask"]).read_bytes()
        assert hashlib.sha256(image_bytes).hexdigest() == row["image_sha256"]
        assert hashlib.sha256(mask_bytes).hexdigest() == row["mask_sha256"]
        assert row["source"] == "synthetic" and row["channels"] == "3"
        assert (row["width"], row["height"]) == ("64", "64")
        mask = np.asarray(Image.open(synthetic_dir / row["mask"]))
        assert set(np.unique(mask)) <= {0, 255}
        assert float(row["blur_fraction"]) == pytest.approx((mask == 255).mean(), abs=1e-6)
    assert not any(p.name.startswith(".synthetic") for p in synthetic_dir.parent.iterdir())  # temp dir gone


def test_split_non_empty_deterministic_and_seeded(synthetic_dir: Path, tmp_path: Path) -> None:
    rows = _rows(synthetic_dir)
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    again = tmp_path / "again"
    prepare_dataset("synthetic", again, seed=3, synthetic=SYNTH)
    assert (again / "manifest.csv").read_bytes() == (synthetic_dir / "manifest.csv").read_bytes()
    ids = [r["id"] for r in rows]
    blur = [float(r["blur_fraction"]) for r in rows]
    splits = {seed: stratified_split(ids, blur, None, seed) for seed in range(4)}
    assert len({tuple(sorted(s.items())) for s in splits.values()}) > 1  # the seed matters


def test_stratified_split_balances_blur_fraction() -> None:
    rng = np.random.default_rng(0)
    ids = [f"s{i:03d}" for i in range(200)]
    blur = rng.beta(0.7, 0.7, 200).tolist()
    split = stratified_split(ids, blur, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=1)
    counts = {name: sum(1 for s in split.values() if s == name) for name in ("train", "val", "test")}
    assert counts == {"train": 160, "val": 20, "test": 20}
    for name in ("val", "test"):
        values = np.array([b for i, b in zip(ids, blur, strict=True) if split[i] == name])
        assert abs(values.mean() - np.mean(blur)) < 0.05
        assert values.min() < 0.1 and values.max() > 0.9  # spans the whole range
    shuffled = stratified_split(ids[::-1], blur[::-1], {"train": 0.8, "val": 0.1, "test": 0.1}, seed=1)
    assert shuffled == split  # independent of input order


def test_split_edge_cases() -> None:
    assert set(
        stratified_split(
            ["a", "b", "c"], [0.1, 0.2, 0.3], {"train": 0.98, "val": 0.01, "test": 0.01}, 0
        ).values()
    ) == {
        "train",
        "val",
        "test",
    }
    assert set(stratified_split(["a", "b"], [0.1, 0.2], {"train": 0.9, "val": 0.1}, 0).values()) == {
        "train",
        "val",
    }
    with pytest.raises(ValueError, match="sum to 1"):
        stratified_split(["a"], [0.0], {"train": 0.5}, 0)
    with pytest.raises(ValueError, match="unknown split"):
        stratified_split(["a"], [0.0], {"train": 0.5, "holdout": 0.5}, 0)
    with pytest.raises(ValueError, match="cannot fill"):
        stratified_split(["a"], [0.0], None, 0)


def _copy_cuhk_subset(source: Path, target: Path, count: int = 10) -> Path:
    (target / "images").mkdir(parents=True)
    (target / "masks").mkdir()
    images = sorted((source / "images").glob("*.jpg"))[:count]
    for image in images:
        shutil.copy(image, target / "images" / image.name)
        shutil.copy(source / "masks" / f"{image.stem}.png", target / "masks" / f"{image.stem}.png")
    rgba = sorted(p for p in (source / "masks").glob("*.png") if Image.open(p).mode == "RGBA")[:1]
    for mask in rgba:  # make sure the RGBA case of the real data is exercised
        shutil.copy(source / "images" / f"{mask.stem}.jpg", target / "images" / f"{mask.stem}.jpg")
        shutil.copy(mask, target / "masks" / mask.name)
    return target


def test_prepare_cuhk_subset(shared_cuhk: Path, tmp_path: Path) -> None:
    raw = _copy_cuhk_subset(shared_cuhk, tmp_path / "cuhk")
    count = len(list((raw / "images").iterdir()))
    out = tmp_path / "prepared"
    prepare_dataset("cuhk", out, input_dir=raw, seed=0, split={"train": 0.8, "val": 0.2})
    rows = manifest.read(out)
    assert len(rows) == count and {r["split"] for r in rows} == {"train", "val"}
    for row in rows:
        assert (out / row["image"]).read_bytes() == (raw / "images" / Path(row["image"]).name).read_bytes()
        mask = np.asarray(Image.open(out / row["mask"]))
        source_mask = np.asarray(Image.open(raw / "masks" / f"{row['id']}.png").convert("L"))
        assert np.array_equal(mask, source_mask)  # CUHK: 255 = blurred, kept as is
        assert (int(row["width"]), int(row["height"])) == Image.open(out / row["image"]).size


def _fake_pairs(
    folder: Path, image_dir: str, mask_dir: str, polarity_sharp_white: bool, count: int = 6
) -> None:
    rng = np.random.default_rng(0)
    (folder / image_dir).mkdir(parents=True)
    (folder / mask_dir).mkdir(parents=True)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(
            folder / image_dir / f"{index}.jpg"
        )
        blurred = np.zeros((40, 56), dtype=np.uint8)
        blurred[:, : 8 * (index + 1)] = 1
        painted = (1 - blurred) if polarity_sharp_white else blurred
        Image.fromarray(painted * 255).save(folder / mask_dir / f"{index}.png")


def test_prepare_dut_inverts_polarity(tmp_path: Path) -> None:
    raw = tmp_path / "DUT"
    _fake_pairs(raw / "train_data", "source", "gt", polarity_sharp_white=True)
    _fake_pairs(raw / "test_data", "source", "gt", polarity_sharp_white=True)
    out = tmp_path / "prepared"
    prepare_dataset("dut", out, input_dir=raw, seed=0)
    rows = manifest.read(out)
    assert len(rows) == 12
    assert {r["id"].split("_source_")[0] for r in rows} == {"train_data", "test_data"}
    for row in rows:
        index = int(row["id"].rsplit("_", 1)[1])
        mask = np.asarray(Image.open(out / row["mask"])) // 255
        assert mask[:, : 8 * (index + 1)].all() and not mask[:, 8 * (index + 1) :].any()  # 1 = blurred
        assert row["image"].endswith(".jpg") and row["source"] == "dut"


def test_prepare_folder_needs_polarity_and_honours_it(tmp_path: Path) -> None:
    raw = tmp_path / "mine"
    _fake_pairs(raw, "images", "masks", polarity_sharp_white=True)
    with pytest.raises(ValueError, match="needs polarity"):
        prepare_dataset("folder", tmp_path / "out", input_dir=raw)
    prepare_dataset(
        "folder", tmp_path / "out", input_dir=raw, polarity="sharp-white", split={"train": 0.5, "val": 0.5}
    )
    row = next(r for r in manifest.read(tmp_path / "out") if r["id"] == "0")
    assert np.asarray(Image.open(tmp_path / "out" / row["mask"]))[:, :8].min() == 255


def test_layout_errors_name_the_files(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match=r"cuhk folder .*/nothing/images does not exist"):
        read_source("cuhk", _mkdir(tmp_path / "nothing"))
    raw = tmp_path / "raw"
    _fake_pairs(raw, "images", "masks", polarity_sharp_white=False)
    (raw / "masks" / "3.png").unlink()
    with pytest.raises(LayoutError, match=r"1 image\(s\) in .*images have no mask in .*masks: 3\.jpg"):
        read_source("folder", raw)
    (raw / "images" / "3.jpg").unlink()
    shutil.copy(raw / "masks" / "0.png", raw / "masks" / "extra.png")
    with pytest.raises(LayoutError, match=r"no image in .*: extra\.png"):
        read_source("folder", raw)
    with pytest.raises(LayoutError, match="no image/mask folders found"):
        read_source("dut", _mkdir(tmp_path / "empty"))


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def test_bad_files_fail_and_keep_the_previous_output(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    _fake_pairs(raw, "images", "masks", polarity_sharp_white=False)
    out = tmp_path / "out"
    prepare_dataset("folder", out, input_dir=raw, polarity="blurred-white", split={"train": 0.5, "val": 0.5})
    before = (out / "manifest.csv").read_bytes()
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(raw / "masks" / "2.png")
    with pytest.raises(ImageError, match=r"2\.png: mask size 10x10 differs from image .*2\.jpg \(56x40\)"):
        prepare_dataset("folder", out, input_dir=raw, polarity="blurred-white")
    data = (raw / "images" / "1.jpg").read_bytes()
    (raw / "images" / "1.jpg").write_bytes(data[: len(data) // 2])
    Image.fromarray(np.zeros((40, 56), dtype=np.uint8)).save(raw / "masks" / "2.png")
    with pytest.raises(ImageError, match=r"1\.jpg: truncated"):
        prepare_dataset("folder", out, input_dir=raw, polarity="blurred-white")
    assert (out / "manifest.csv").read_bytes() == before  # atomic: the old dataset is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]  # no temp dirs left behind


def test_greyscale_source_images_are_stored_as_rgb(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    _fake_pairs(raw, "images", "masks", polarity_sharp_white=False, count=2)
    Image.open(raw / "images" / "0.jpg").convert("L").save(raw / "images" / "0.jpg")
    out = tmp_path / "out"
    prepare_dataset("folder", out, input_dir=raw, polarity="blurred-white", split={"train": 0.5, "val": 0.5})
    row = next(r for r in manifest.read(out) if r["id"] == "0")
    assert row["image"] == "images/0.png" and Image.open(out / row["image"]).mode == "RGB"


def test_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown source 'flickr'"):
        prepare_dataset("flickr", tmp_path / "x")
    with pytest.raises(ValueError, match="needs input_dir"):
        prepare_dataset("cuhk", tmp_path / "x")
    with pytest.raises(ValueError, match="takes no input_dir"):
        prepare_dataset("synthetic", tmp_path / "x", input_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown synthetic option"):
        prepare_dataset("synthetic", tmp_path / "x", synthetic={"num_imgs": 3})
    assert not (tmp_path / "x").exists()


def test_worker_processes_do_not_change_the_output(tmp_path: Path) -> None:
    options = {"num_images": 64, "size": 32}  # enough images to use the process pool
    prepare_dataset("synthetic", tmp_path / "serial", seed=1, synthetic=options, workers=1)
    prepare_dataset("synthetic", tmp_path / "pool", seed=1, synthetic=options, workers=2)
    assert (tmp_path / "serial/manifest.csv").read_bytes() == (tmp_path / "pool/manifest.csv").read_bytes()
