"""DVC push/pull of a prepared dataset round-trips through an S3 remote (moto server on 127.0.0.1).

The library never imports dvc; this drives the same `dvc` CLI that users and `dvc repro` use.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import numpy as np
import pytest
from PIL import Image

DVC = Path(sys.executable).with_name("dvc")


def _run(cwd: Path, *args: str) -> str:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _dvc(cwd: Path, *args: str) -> str:
    return _run(cwd, str(DVC), *args)


def _tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _prepared_folder(root: Path, n: int = 4) -> None:
    """A small stand-in for a prepared dataset: images, 0/255 masks and a manifest."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    lines = ["id,split,image,mask"]
    for k in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(root / f"images/{k}.jpg")
        Image.fromarray((rng.random((32, 40)) > 0.5).astype(np.uint8) * 255).save(root / f"masks/{k}.png")
        lines.append(f"{k},train,images/{k}.jpg,masks/{k}.png")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")


@pytest.mark.skipif(not DVC.exists(), reason=f"dvc CLI not installed beside {sys.executable}")
def test_dvc_push_pull_round_trip(s3_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site-cache"))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))  # no developer hooks or settings
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    bucket = f"dvc-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)

    repo = tmp_path / "repo"
    repo.mkdir()
    _run(repo, "git", "init", "-q")
    _dvc(repo, "init", "-q")
    data = repo / "data" / "prepared"
    _prepared_folder(data)
    before = _tree(data)
    _dvc(repo, "add", "-q", "data/prepared")
    _dvc(repo, "remote", "add", "-d", "s3remote", f"s3://{bucket}/dvcstore")
    _dvc(repo, "remote", "modify", "s3remote", "endpointurl", s3_server)
    _dvc(repo, "push", "-q")

    listing = boto3.client("s3", endpoint_url=s3_server).list_objects_v2(Bucket=bucket, Prefix="dvcstore/")
    keys = [obj["Key"] for obj in listing.get("Contents", [])]
    assert len(keys) == len(before) + 1, keys  # every file plus the directory listing (.dir)
    assert any(key.endswith(".dir") for key in keys)

    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(data)
    _dvc(repo, "pull", "-q")
    assert _tree(data) == before
    assert (repo / "data" / "prepared.dvc").is_file()
    assert "/prepared" in (repo / "data" / ".gitignore").read_text().splitlines()
