"""DBDDataset: shapes, ranges, deterministic joint augmentation that keeps image and mask aligned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dbdgan.data.dataset import DBDDataset
from dbdgan.data.prepare import prepare_dataset


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dataset") / "synthetic"
    prepare_dataset("synthetic", out, seed=0, synthetic={"num_images": 12, "size": 64})
    return out


@pytest.fixture(scope="module")
def aligned_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images whose pixels spell out their own mask (blurred = bright): alignment becomes checkable.
    Half are large JPEGs, so the reduced-scale (draft) decoding path is exercised too."""
    root = tmp_path_factory.mktemp("aligned")
    raw = root / "raw"
    (raw / "images").mkdir(parents=True)
    (raw / "masks").mkdir()
    rng = np.random.default_rng(0)
    for index in range(4):
        mask = np.zeros((180, 270), dtype=np.uint8)
        for _ in range(3):
            top, left = rng.integers(0, 120), rng.integers(0, 210)
            mask[top : top + 60, left : left + 60] = 1
        image = np.repeat((mask * 200 + 20)[:, :, None], 3, axis=2).astype(np.uint8)
        name = f"{index}.jpg" if index % 2 else f"{index}.png"
        Image.fromarray(image).save(raw / "images" / name, quality=95)
        Image.fromarray(mask * 255).save(raw / "masks" / f"{index}.png")
    prepare_dataset("folder", root / "out", input_dir=raw, polarity="blurred-white", split={"train": 1.0})
    return root / "out"


def test_shapes_ranges_and_ids(synthetic_dir: Path) -> None:
    dataset = DBDDataset(synthetic_dir, "train", size=48, augment=True, seed=0)
    assert len(dataset) > 0
    sample = dataset[0]
    assert sample["image"].shape == (3, 48, 48) and sample["image"].dtype == torch.float32
    assert sample["mask"].shape == (1, 48, 48) and sample["mask"].dtype == torch.float32
    assert sample["image"].min() >= 0.0 and sample["image"].max() <= 1.0
    assert set(sample["mask"].unique().tolist()) <= {0.0, 1.0}
    assert sample["id"] == dataset.ids[0]


def test_native_size_without_augmentation(synthetic_dir: Path) -> None:
    dataset = DBDDataset(synthetic_dir, "val", size=None, augment=False)
    sample = dataset[0]
    assert sample["image"].shape == (3, 64, 64) and sample["mask"].shape == (1, 64, 64)
    row = dataset.rows[0]
    pixels = np.array(Image.open(synthetic_dir / row["image"]).convert("RGB"))
    assert torch.equal(sample["image"], torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)


def test_augmentation_is_deterministic_per_epoch(synthetic_dir: Path) -> None:
    dataset = DBDDataset(synthetic_dir, "train", size=48, augment=True, seed=5)
    first, again = dataset[1], dataset[1]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["mask"], again["mask"])
    dataset.set_epoch(1)
    assert dataset.epoch == 1
    assert not torch.equal(first["image"], dataset[1]["image"])
    dataset.set_epoch(0)
    assert torch.equal(first["image"], dataset[1]["image"])
    other_seed = DBDDataset(synthetic_dir, "train", size=48, augment=True, seed=6)
    assert not torch.equal(first["image"], other_seed[1]["image"])
    plain = DBDDataset(synthetic_dir, "train", size=48, augment=False)
    assert torch.equal(plain[1]["image"], plain[1]["image"])


def test_joint_augmentation_keeps_image_and_mask_aligned(aligned_dir: Path) -> None:
    dataset = DBDDataset(aligned_dir, "train", size=40, augment=True, seed=0, jitter=0.0)
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            sample = dataset[index]
            from_image = (sample["image"][0] > 0.47).float()  # 20 -> 0.08, 220 -> 0.86
            agreement = (from_image == sample["mask"][0]).float().mean().item()
            assert agreement > 0.97


def test_reduced_scale_jpeg_decoding_matches_full_decoding(aligned_dir: Path) -> None:
    dataset = DBDDataset(aligned_dir, "train", size=40, augment=False)
    for index, row in enumerate(dataset.rows):
        full = Image.open(aligned_dir / row["image"]).convert("RGB").resize((40, 40), Image.Resampling.BILINEAR)
        reference = torch.from_numpy(np.array(full)).permute(2, 0, 1).float() / 255
        assert (dataset[index]["image"] - reference).abs().mean() < 0.03


def test_set_epoch_reaches_persistent_workers(synthetic_dir: Path) -> None:
    dataset = DBDDataset(synthetic_dir, "train", size=32, augment=True, seed=0)
    loader = DataLoader(dataset, batch_size=len(dataset), num_workers=1, persistent_workers=True)
    epoch0 = next(iter(loader))["image"]
    dataset.set_epoch(1)
    epoch1 = next(iter(loader))["image"]
    dataset.set_epoch(0)
    assert not torch.equal(epoch0, epoch1)
    assert torch.equal(epoch0, next(iter(loader))["image"])
    del loader


def test_errors(synthetic_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split must be one of"):
        DBDDataset(synthetic_dir, "training", size=32, augment=False)
    with pytest.raises(FileNotFoundError, match="no manifest"):
        DBDDataset(tmp_path, "train", size=32, augment=False)
    single = tmp_path / "single"
    prepare_dataset("synthetic", single, synthetic={"num_images": 2, "size": 32}, split={"train": 0.5, "val": 0.5})
    with pytest.raises(ValueError, match=r"no rows with split='test' \(splits present: \['train', 'val'\]\)"):
        DBDDataset(single, "test", size=32, augment=False)


def test_crops_keep_the_photos_aspect_within_ratio(aligned_dir: Path) -> None:
    """Crops of a 3:2 photo are about 3:2 (times `ratio`), so they are squashed to the square input as the
    whole photo is at evaluation; their area is the `scale` fraction of the photo's."""
    dataset = DBDDataset(aligned_dir, "train", size=32, augment=True, scale=(0.25, 0.25), ratio=(0.9, 1.1))
    rng = np.random.default_rng(0)
    for _ in range(20):
        left, top, right, bottom = dataset._crop_box(rng, 270, 180)
        width, height = right - left, bottom - top
        assert 1.5 * 0.9 - 1e-6 <= width / height <= 1.5 * 1.1 + 1e-6
        assert width * height == pytest.approx(0.25 * 270 * 180)
        assert left >= 0 and top >= 0 and right <= 270 and bottom <= 180
