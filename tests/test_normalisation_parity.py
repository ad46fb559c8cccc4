"""The input normalisation belongs to the network: one photo through `dbdgan predict`, the MLflow pyfunc and
onnxruntime gives the same map, with no caller normalising anything."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dbdgan.checkpoint import save_model_file
from dbdgan.inference import blur_maps, load_predictor
from dbdgan.inference_onnx import OnnxModel, export_onnx
from dbdgan.models import create_model
from dbdgan.models.efficientnet_lite import LITE_MEAN
from dbdgan.predict import predict_paths


@pytest.fixture()
def photo(tmp_path) -> tuple[np.ndarray, str]:
    """A lossless photo-like image: smooth gradients and a textured patch (odd size: resizing is exercised)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:97, 0:131]
    image = np.stack([x * 1.9, y * 2.5, (x + y) * 1.1], axis=-1)
    image[20:60, 30:90] += rng.normal(0, 40, (40, 60, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    path = tmp_path / "photos" / "photo.png"
    path.parent.mkdir()
    Image.fromarray(image).save(path)
    return image, str(path)


@pytest.fixture()
def model_file(tmp_path) -> str:
    """A pretrained-encoder student with a random (but fixed) decoder, saved as training saves it."""
    torch.manual_seed(0)
    model = create_model("lite_unet_tiny", pretrained=True)
    assert tuple(model.mean.flatten().tolist()) == pytest.approx(LITE_MEAN)  # not ImageNet's mean/std
    path = tmp_path / "student.pt"
    save_model_file(path, model.arch, model.arch_kwargs, model, {"input_size": 64})
    return str(path)


def test_predict_pyfunc_and_onnxruntime_give_the_same_map(tmp_path, photo, model_file, monkeypatch):
    import mlflow

    from dbdgan.registration import _log_pyfunc

    image, path = photo
    loaded = load_predictor(model_file)
    assert loaded.input_size == 64
    reference = blur_maps(loaded.model.eval(), [image], loaded.input_size)[0]
    assert reference.shape == image.shape[:2] and reference.std() > 0.05  # a real map, not a constant

    predict_paths([path], model_file, tmp_path / "maps", progress=False)
    written = np.asarray(Image.open(tmp_path / "maps" / "photo_blur.png"), dtype=np.float32) / 255.0
    assert np.abs(written - reference).max() <= 0.5 / 255 + 1e-6  # the 8-bit PNG of the same map

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = mlflow.create_experiment("parity", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        info = _log_pyfunc(tmp_path / "student.pt", "# model card\n")
    served = mlflow.pyfunc.load_model(info.model_uri).predict(image[None], params={"output": "float"})
    assert np.abs(served[0]["map"] - reference).max() < 1e-5

    onnx_path = export_onnx(loaded.model, tmp_path / "student.onnx")
    from_onnx = blur_maps(OnnxModel(onnx_path), [image], loaded.input_size)[0]
    assert np.abs(from_onnx - reference).max() < 1e-4
