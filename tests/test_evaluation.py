"""evaluate_models on a tiny prepared dataset: files written, values sane, a perfect model scores 1."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from dbdgan.evaluation.evaluate import evaluate_models, grid_indices, read_split
from dbdgan.evaluation.plots import grid_size
from dbdgan.evaluation.scores import HEADLINE, read_scores
from dbdgan.inference import predict_probability

COLUMNS = [
    "id", "split", "source", "image", "mask", "width", "height", "channels",
    "blur_fraction", "image_sha256", "mask_sha256",
]  # fmt: skip
SIZES = {"s0": (40, 32), "s1": (36, 36), "s2": (28, 44), "s3": (32, 30), "t0": (32, 32)}  # id -> (h, w)


def write_dataset(root: Path) -> Path:
    """4 test + 1 train images; the red channel is the mask (so a 'perfect' model can read the answer)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    for sample_id, (h, w) in SIZES.items():
        mask = np.zeros((h, w), dtype=np.uint8)
        mask[:, : w // 2 + int(rng.integers(-4, 5))] = 255  # left part blurred
        mask[: h // 4] = 255 - mask[: h // 4]  # ... and a band with the opposite label: not symmetric
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image[..., 0] = np.where(mask > 0, 230, 20)
        Image.fromarray(image).save(root / "images" / f"{sample_id}.png")
        Image.fromarray(mask).save(root / "masks" / f"{sample_id}.png")
        rows.append(
            {
                "id": sample_id,
                "split": "train" if sample_id.startswith("t") else "test",
                "source": "synthetic",
                "image": f"images/{sample_id}.png",
                "mask": f"masks/{sample_id}.png",
                "width": w,
                "height": h,
                "channels": 3,
                "blur_fraction": float((mask > 0).mean()),
                "image_sha256": hashlib.sha256(
                    (root / "images" / f"{sample_id}.png").read_bytes()
                ).hexdigest(),
                "mask_sha256": hashlib.sha256((root / "masks" / f"{sample_id}.png").read_bytes()).hexdigest(),
            }
        )
    with (root / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return root


def perfect_model() -> nn.Module:
    """1x1 conv reading the red channel: logit = 40 * (red - 0.5) -> probability ~ mask."""
    net = nn.Conv2d(3, 1, 1)
    with torch.no_grad():
        net.weight.zero_()
        net.weight[0, 0] = 40.0
        net.bias.fill_(-20.0)
    return net


def random_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1))


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return write_dataset(tmp_path / "data")


def test_evaluate_models_writes_everything(data_dir, tmp_path):
    out_dir = tmp_path / "metrics"
    models = {"perfect": perfect_model(), "random": random_model().train()}
    results = evaluate_models(models, data_dir, "test", out_dir, grid_samples=3)

    for name in models:
        saved = read_scores(out_dir, name)  # the headline DVC metric and the details beside it
        assert saved == results[name]
        assert sorted(json.loads((out_dir / f"{name}.json").read_text())) == sorted(HEADLINE)
        assert saved["n_images"] == 4 and saved["settings"]["input_size"] == "native"
        for key in ("max_f", "mean_f", "adaptive_f", "mae", "iou", "max_f_threshold"):
            for prefix in ("", "infocus_"):
                assert 0.0 <= saved[prefix + key] <= 1.0, (name, prefix + key)
        for kind, columns in (("pr", "threshold,precision,recall,infocus_precision,infocus_recall"),
                              ("f", "threshold,f,infocus_f")):  # fmt: skip
            lines = (out_dir / "plots" / f"{kind}_{name}.csv").read_text().splitlines()
            assert lines[0] == columns and len(lines) == 257
    assert models["random"].training, "evaluation must restore the model's train mode"

    perfect = results["perfect"]
    assert perfect["mae"] < 1e-3 and perfect["iou"] == 1.0 and perfect["infocus_iou"] == 1.0
    assert perfect["max_f"] > 0.999 and perfect["adaptive_f"] > 0.999 and perfect["infocus_max_f"] > 0.999
    assert results["random"]["max_f"] < perfect["max_f"]

    with Image.open(out_dir / "plots" / "grid.png") as grid:
        assert grid.size == grid_size(3, 2 + len(models), 160)
    with Image.open(out_dir / "plots" / "curves.png") as curves:
        assert curves.size == (1000, 420)
    assert not [p for p in out_dir.rglob(".*") if p.is_file()], "temp files left behind"


def test_resized_input_and_flip_tta(data_dir, tmp_path):
    out = evaluate_models({"perfect": perfect_model()}, data_dir, "test", tmp_path / "m", input_size=24,
                          flip_tta=True, grid_samples=0)  # fmt: skip
    # the map is predicted at 24x24 and resized back: still close to the ground truth, edges blurred
    assert out["perfect"]["max_f"] > 0.9 and out["perfect"]["mae"] < 0.1
    assert out["perfect"]["settings"] == {
        "split": "test", "beta2": 0.3, "adaptive_factor": 1.5, "thresholds": 256,
        "flip_tta": True, "input_size": [24, 24],
    }  # fmt: skip

    torch.manual_seed(0)
    image = torch.rand(3, 21, 17)
    asymmetric = nn.Conv2d(3, 1, (1, 3), padding=(0, 1))
    with torch.no_grad():
        tta = predict_probability(asymmetric, image[None], flip_tta=True)[0]
        expected = (
            torch.sigmoid(asymmetric(image[None])) + torch.sigmoid(asymmetric(image[None].flip(-1))).flip(-1)
        ) / 2
        torch.testing.assert_close(tta, expected[0])
        resized = predict_probability(asymmetric, image[None], input_size=(16, 12), flip_tta=True)[0]
    assert resized.shape == (1, 21, 17)
    assert resized.min() >= 0.0 and resized.max() <= 1.0


def test_read_split_and_bad_input(data_dir, tmp_path):
    assert [s.id for s in read_split(data_dir, "test")] == ["s0", "s1", "s2", "s3"]
    assert grid_indices(10, 3) == [0, 4, 9] and grid_indices(2, 6) == [0, 1] and grid_indices(5, 0) == []
    with pytest.raises(ValueError, match=r"split='val'.*\['test', 'train'\]"):
        read_split(data_dir, "val")
    with pytest.raises(ValueError, match="model names"):
        evaluate_models({"a/b": perfect_model()}, data_dir, "test", tmp_path / "m")
    Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(data_dir / "masks" / "s1.png")
    with pytest.raises(ValueError, match="s1.png"):
        evaluate_models({"p": perfect_model()}, data_dir, "test", tmp_path / "m")
    (data_dir / "manifest.csv").write_text("id,split,image\nx,test,images/x.png\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['source', 'mask', "):
        read_split(data_dir, "test")
