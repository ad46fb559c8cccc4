"""`dbdgan predict`: files and folders, original resolution, batching, every bad input, exit status."""

from __future__ import annotations

import argparse
import io
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dbdgan.checkpoint import load_model_file, save_model_file
from dbdgan.cli_models import add_commands
from dbdgan.config import load_params
from dbdgan.inference import predict_probability, to_tensor
from dbdgan.models import create_model
from dbdgan.predict import PredictionFailed, predict_paths

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "student.pt"
    save_model_file(path, "mobile_tiny", {}, create_model("mobile_tiny"))
    return path


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def save(path: Path, image: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def test_good_inputs_of_every_mode_keep_their_resolution(tmp_path, model_file):
    inputs = tmp_path / "in"
    rgba = np.dstack([photo(24, 33), photo(24, 33, seed=1)[..., 0]])
    files = {
        "rgb": save(inputs / "rgb.jpg", Image.fromarray(photo(37, 50)), quality=90),
        "grey": save(inputs / "grey.png", Image.fromarray(photo(30, 41)[:, :, 0])),
        "rgba": save(inputs / "sub/rgba.png", Image.fromarray(rgba)),
        "deep": save(inputs / "deep.png", Image.fromarray(photo(28, 28)[:, :, 0].astype(np.uint16) * 257)),
        "palette": save(inputs / "palette.gif", Image.fromarray(photo(20, 26)).convert("P")),
    }
    assert Image.open(files["deep"]).mode.startswith("I")  # a real 16-bit PNG
    (inputs / "README.txt").write_text("not an image, and not named like one: ignored in a folder")
    (inputs / ".hidden.png").write_bytes(b"hidden files are skipped")
    out = inputs / "maps"  # inside the input folder: must not be read back as input
    summary = predict_paths([inputs], model_file, out, batch_size=3, input_size=32, progress=False)
    assert summary["failed"] == [] and summary["written"] == 5
    assert summary["ignored"] == [str(inputs / "README.txt")]
    notes = {Path(o["input"]).stem: o.get("note", "") for o in summary["outputs"]}
    assert "greyscale" in notes["grey"] and "alpha ignored" in notes["rgba"] and "16-bit" in notes["deep"]
    assert notes["rgb"] == ""
    for stem, path in files.items():
        with Image.open(path) as original:
            size = original.size
        with Image.open(out / f"{stem}_blur.png") as blur, Image.open(out / f"{stem}_overlay.jpg") as over:
            assert blur.size == size and blur.mode == "L"
            assert over.size == size and over.mode == "RGB" and over.format == "JPEG"
    again = predict_paths([inputs], model_file, out, input_size=32, progress=False)
    assert again["written"] == 5  # the earlier outputs inside the folder were not picked up


def test_batched_maps_match_the_single_prediction_path(tmp_path, model_file):
    images = [photo(40, 56, 1), photo(33, 21, 2), photo(40, 56, 3)]
    paths = [save(tmp_path / f"im{i}.png", Image.fromarray(img)) for i, img in enumerate(images)]
    model = load_model_file(model_file)
    for size in (48, None):
        out = tmp_path / f"out{size}"
        predict_paths(paths, model_file, out, batch_size=3, input_size=size, progress=False)
        for i, img in enumerate(images):
            expected = predict_probability(model, to_tensor(img), size)[0, 0].numpy()
            written = np.asarray(Image.open(out / f"im{i}_blur.png"), dtype=np.float32) / 255.0
            assert np.abs(written - expected).max() <= 0.5 / 255 + 1e-6


def test_bad_inputs_are_skipped_with_a_clear_message_each(tmp_path, model_file, caplog):
    good = save(tmp_path / "good.png", Image.fromarray(photo(32, 32)))
    jpeg = io.BytesIO()
    Image.fromarray(photo(64, 64)).save(jpeg, format="JPEG", quality=95)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + random.Random(0).randbytes(200))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    huge = save(tmp_path / "huge.png", Image.new("RGB", (120, 100)))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.png"
    inputs = [good, truncated, corrupt, text, huge, empty, missing]
    summary = predict_paths(inputs, model_file, tmp_path / "out", max_pixels=10_000, input_size=32,
                            progress=False)
    assert summary["written"] == 1 and summary["inputs"] == len(inputs)
    reasons = {Path(f["path"]).name: f["error"] for f in summary["failed"]}
    assert set(reasons) == {p.name for p in inputs[1:]}
    assert "truncated" in reasons["truncated.jpg"]
    assert "not a readable image" in reasons["corrupt.png"] and "not a readable image" in reasons["notes.txt"]
    assert "max_pixels=10000" in reasons["huge.png"] and "12000" in reasons["huge.png"]
    assert "no such file" in reasons["missing.png"]
    for name in ("truncated.jpg", "corrupt.png", "huge.png"):
        assert any(name in record.getMessage() for record in caplog.records), name
    assert (tmp_path / "out/good_blur.png").is_file()
    assert not (tmp_path / "out/huge_blur.png").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_reported(tmp_path, model_file):
    locked = save(tmp_path / "locked.png", Image.fromarray(photo(16, 16)))
    locked.chmod(0)
    summary = predict_paths([locked], model_file, tmp_path / "out", progress=False)
    assert summary["written"] == 0 and "locked.png" in summary["failed"][0]["path"]


def test_same_stem_in_two_folders_gets_two_outputs(tmp_path, model_file):
    a = save(tmp_path / "a/x.png", Image.fromarray(photo(16, 16, 1)))
    b = save(tmp_path / "b/x.jpg", Image.fromarray(photo(16, 20, 2)))
    summary = predict_paths([a, b], model_file, tmp_path / "out", input_size=32, progress=False)
    assert [Path(o["blur_map"]).name for o in summary["outputs"]] == ["x_blur.png", "x-2_blur.png"]


def _parser() -> argparse.ArgumentParser:
    """The same contract as cli.build_parser's `add`: handlers take (params, args)."""
    parser = argparse.ArgumentParser(prog="dbdgan")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, handler, help_text):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--params", default=str(REPO / "params.yaml"))
        p.set_defaults(handler=handler)
        return p

    add_commands(add)
    return parser


def test_cli_predict_exit_status_says_whether_anything_failed(tmp_path, model_file, capsys):
    good = save(tmp_path / "good.png", Image.fromarray(photo(20, 20)))
    args = _parser().parse_args(["predict", str(good), "--model", str(model_file), "-o", str(tmp_path / "o"),
                                 "--no-progress"])
    params = load_params(args.params)
    result = args.handler(params, args)
    assert result["written"] == 1 and result["input_size"] == "native"  # the file stores no size: no guessing
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    args = _parser().parse_args(["predict", str(good), str(bad), "--model", str(model_file), "-o",
                                 str(tmp_path / "o"), "--no-progress", "--input-size", "native", "--json"])
    with pytest.raises(PredictionFailed, match="1 of 2 inputs failed: .*bad.jpg"):
        args.handler(params, args)
    printed = json.loads(capsys.readouterr().out)
    assert printed["written"] == 1 and printed["input_size"] == "native"
    with pytest.raises(SystemExit):
        _parser().parse_args(["predict", str(good), "-o", "x", "--input-size", "tiny"])


def test_cli_predict_uses_the_size_stored_in_a_model_file(tmp_path):
    """Training stores the whole-image size it validated at; `auto` predicts at that size."""
    stored = tmp_path / "sized.pt"
    save_model_file(stored, "mobile_tiny", {}, create_model("mobile_tiny"), {"input_size": 40})
    good = save(tmp_path / "good.png", Image.fromarray(photo(30, 50)))
    args = _parser().parse_args(["predict", str(good), "--model", str(stored), "-o", str(tmp_path / "o"),
                                 "--no-progress"])
    result = args.handler(load_params(args.params), args)
    assert result["written"] == 1 and result["input_size"] == 40


def test_cli_predict_prints_one_summary_line_unless_json(tmp_path, model_file, capsys):
    """Issue 26: 30-60 lines of JSON per run became one line; --json keeps every detail."""
    from dbdgan.cli import main

    good = save(tmp_path / "good.png", Image.fromarray(photo(20, 20)))
    assert main(["predict", str(good), "--model", str(model_file), "-o", str(tmp_path / "o"), "--no-progress"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"wrote blur maps and overlays of 1 of 1 inputs to {tmp_path / 'o'} in ")
    assert main(["predict", str(good), "--model", str(model_file), "-o", str(tmp_path / "o"), "--no-progress",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["written"] == 1


def _mlflow_dir(root: Path, metadata: dict, legacy_size: object = "none") -> Path:
    """A downloaded dbdgan pyfunc directory: MLmodel naming the checkpoint (and, for versions registered
    before the size was read from the model file, an inference.json)."""
    import yaml

    root.mkdir()
    save_model_file(root / "student.pt", "mobile_tiny", {}, create_model("mobile_tiny"), metadata)
    artifacts = {"checkpoint": {"path": "student.pt"}}
    if legacy_size != "none":
        (root / "inference.json").write_text(json.dumps({"input_size": legacy_size}))
        artifacts["inference"] = {"path": "inference.json"}
    (root / "MLmodel").write_text(yaml.safe_dump({"flavors": {"python_function": {"artifacts": artifacts}}}))
    return root


def test_the_input_size_comes_from_the_model_file_and_old_versions_inference_json_is_a_fallback(tmp_path):
    from dbdgan.inference import checkpoint_from_mlflow_dir, predictor_from_file

    def size_of(model_dir: Path) -> object:
        checkpoint, legacy = checkpoint_from_mlflow_dir(model_dir)
        return predictor_from_file(checkpoint, source="models:/x/1", legacy=legacy).input_size

    assert size_of(_mlflow_dir(tmp_path / "new", {"input_size": 48})) == 48  # no inference.json: the file's
    assert size_of(_mlflow_dir(tmp_path / "both", {"input_size": 48}, legacy_size=[40, 56])) == 48  # the file wins
    assert size_of(_mlflow_dir(tmp_path / "native", {"input_size": None}, legacy_size=40)) is None
    assert size_of(_mlflow_dir(tmp_path / "old", {}, legacy_size=[40, 56])) == (40, 56)  # file without a size
    assert size_of(_mlflow_dir(tmp_path / "neither", {})) is None
