"""data/manifest.py, the one reader and writer of manifest.csv: byte format, checked reading, split filter,
errors that name the file, line, column and value, atomic writing, split counts and the hash."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from dbdgan.data import manifest
from dbdgan.data.manifest import COLUMNS, ManifestError
from dbdgan.data.prepare import prepare_dataset


def _record(sample_id: str, split: str, blur: float = 0.25) -> dict:
    return {"id": sample_id, "split": split, "source": "synthetic", "image": f"images/{sample_id}.jpg",
            "mask": f"masks/{sample_id}.png", "width": 40, "height": 30, "channels": 3, "blur_fraction": blur,
            "image_sha256": "a" * 64, "mask_sha256": "b" * 64}


RECORDS = [_record("c", "test", 1 / 3), _record("a", "train"), _record("b", "val", 0.5), _record("d", "train", 0.0)]


def _replace_line(path: Path, line: int, column: str, value: str) -> None:
    """Set one field of a manifest (line numbers as in an editor: the header is line 1)."""
    lines = path.read_text().splitlines()
    fields = lines[line - 1].split(",")
    fields[COLUMNS.index(column)] = value
    lines[line - 1] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    path = manifest.write(tmp_path, RECORDS)
    assert path == tmp_path / "manifest.csv"
    text = path.read_text()
    assert text.splitlines()[0] == ",".join(COLUMNS) and text.endswith("\n") and "\r" not in text
    rows = manifest.read(tmp_path)
    assert [r["id"] for r in rows] == ["a", "b", "c", "d"]  # sorted by id, whatever the records' order
    assert rows[2] == {k: str(v) for k, v in _record("c", "test", 0.333333).items()}  # 6 decimals, all str
    assert manifest.text(rows) == text  # what it reads, it writes back byte for byte
    assert manifest.read(path) == rows  # the folder or the file itself
    assert manifest.has_header(tmp_path)


def test_prepared_manifest_reads_back_to_the_same_bytes(tmp_path: Path) -> None:
    prepare_dataset("synthetic", tmp_path / "p", synthetic={"num_images": 6, "size": 32}, workers=1)
    data = (tmp_path / "p" / "manifest.csv").read_bytes()
    assert manifest.text(manifest.read(tmp_path / "p")).encode() == data
    assert manifest.sha256(tmp_path / "p") == hashlib.sha256(data).hexdigest()
    assert manifest.sha256(tmp_path / "p" / "manifest.csv") == manifest.sha256(tmp_path / "p")


def test_split_filter(tmp_path: Path) -> None:
    manifest.write(tmp_path, RECORDS)
    assert [r["id"] for r in manifest.read(tmp_path, "train")] == ["a", "d"]
    assert [r["id"] for r in manifest.read(tmp_path, "test")] == ["c"]
    manifest.write(tmp_path, [r for r in RECORDS if r["split"] != "val"])
    with pytest.raises(ManifestError, match=r"manifest\.csv: no rows with split='val' \(splits present: "
                                            r"\['test', 'train'\]\)"):
        manifest.read(tmp_path, "val")
    with pytest.raises(ValueError, match="split must be one of"):
        manifest.read(tmp_path, "training")


def test_split_counts(tmp_path: Path) -> None:
    manifest.write(tmp_path, RECORDS)
    assert manifest.split_counts(tmp_path) == {"test": 1, "train": 2, "val": 1}
    assert list(manifest.split_counts(tmp_path)) == ["test", "train", "val"]  # sorted by name
    partial = tmp_path / "partial.csv"  # counting needs only the split column
    partial.write_text("id,split\na,train\nb,train\nc,test\n")
    assert manifest.split_counts(partial) == {"test": 1, "train": 2}
    partial.write_text("id,part\na,train\n")
    with pytest.raises(ManifestError, match=r"partial\.csv: missing column\(s\) \['split'\]"):
        manifest.split_counts(partial)


@pytest.mark.parametrize(
    ("line", "column", "value", "reason"),
    [
        (3, "split", "validation", r"unknown split 'validation'; allowed: \['train', 'val', 'test'\]"),
        (2, "width", "forty", r"'forty' is not a whole number"),
        (4, "height", "0", r"'0' must be at least 1"),
        (5, "blur_fraction", "1.5", r"'1.5' is not in \[0, 1\]"),
        (2, "blur_fraction", "nan", r"'nan' is not in \[0, 1\]"),
        (3, "image", "../outside.jpg", r"path '../outside.jpg' is not relative inside the dataset folder"),
        (4, "mask", "/abs/m.png", r"path '/abs/m.png' is not relative"),
        (2, "image_sha256", "", r"empty value"),
    ],
)
def test_a_bad_value_names_file_line_column_and_value(
    tmp_path: Path, line: int, column: str, value: str, reason: str
) -> None:
    path = manifest.write(tmp_path, RECORDS)
    _replace_line(path, line, column, value)
    with pytest.raises(ManifestError, match=rf"manifest\.csv line {line}, column '{column}': {reason}") as info:
        manifest.read(tmp_path)
    assert (info.value.path, info.value.line, info.value.column) == (path, line, column)
    with pytest.raises(ManifestError, match=rf"line {line}, column '{column}'"):
        manifest.read(tmp_path, "train")  # every row is checked, not only the split's


def test_bad_header_and_shape(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"manifest\.csv: no manifest; run `dbdgan prepare`"):
        manifest.read(tmp_path)
    path = tmp_path / "manifest.csv"
    path.write_text("id,split,image\nx,test,images/x.png\n")
    with pytest.raises(ManifestError, match=r"manifest\.csv: missing column\(s\) \['source', 'mask', .*; "
                                            r"has \['id', 'split', 'image'\]"):
        manifest.read(tmp_path)
    assert not manifest.has_header(tmp_path)
    manifest.write(tmp_path, RECORDS)
    path.write_text(path.read_text() + "e,train\n")
    with pytest.raises(ManifestError, match=r"manifest\.csv line 6: 11 fields expected, got 2"):
        manifest.read(tmp_path)
    manifest.write(tmp_path, RECORDS)
    path.write_text(path.read_text().replace("synthetic,", "synthetic,,", 1))
    with pytest.raises(ManifestError, match=r"manifest\.csv line 2: 11 fields expected, got 12"):
        manifest.read(tmp_path)
    path.write_bytes(b"\xff\xfe" + ",".join(COLUMNS).encode("utf-16-le"))
    with pytest.raises(ManifestError, match="not UTF-8"):
        manifest.read(tmp_path)


def test_extra_columns_are_ignored(tmp_path: Path) -> None:
    path = manifest.write(tmp_path, RECORDS)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0] + ",note", *(line + ",hello" for line in lines[1:])]) + "\n")
    rows = manifest.read(tmp_path)
    assert len(rows) == 4 and tuple(rows[0]) == COLUMNS


def test_read_table_keeps_bad_values_for_validation_to_report(tmp_path: Path) -> None:
    path = manifest.write(tmp_path, RECORDS)
    _replace_line(path, 2, "split", "validation")
    _replace_line(path, 3, "width", "forty")
    _replace_line(path, 4, "image_sha256", "")
    frame = manifest.read_table(tmp_path)
    assert list(frame.columns) == list(COLUMNS) and len(frame) == 4
    assert frame["split"].tolist() == ["validation", "val", "test", "train"]
    assert np.isnan(frame["width"][1]) and frame["width"][0] == 40
    assert frame["image_sha256"].isna().tolist() == [False, False, True, False]
    path.write_text("id,split\na,train\n")
    with pytest.raises(ManifestError, match=r"missing column\(s\) \['source'"):
        manifest.read_table(tmp_path)
    with pytest.raises(FileNotFoundError, match="no manifest"):
        manifest.read_table(tmp_path / "elsewhere")


def test_atomic_write_leaves_the_old_file_or_the_new_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = manifest.write(tmp_path, RECORDS)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="fields not in fieldnames"):  # a bad record: nothing is written
        manifest.write(tmp_path, [*RECORDS, {**_record("e", "train"), "extra": 1}])
    assert path.read_bytes() == before

    def full_disk(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)  # the new content never takes the file's place
    with pytest.raises(OSError, match="No space left"):
        manifest.write(tmp_path, RECORDS[:1])
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.csv"]  # no half-written temp file left
    manifest.write(tmp_path, RECORDS[:1])
    assert [r["id"] for r in manifest.read(tmp_path)] == ["c"]
