"""`manifest.csv`, the prepared dataset's table of contents: the one module that reads and writes it.

A prepared folder (see `dbdgan.data.prepare`) holds one row per sample, columns `COLUMNS`, sorted by id,
each sample in one of `SPLITS`. Everything that needs the manifest goes through here:

    read(data_dir, split=None)  the rows as dicts of str, every value checked (training, evaluation)
    read_table(data_dir)        the rows as a pandas frame of raw values, only the header checked
                                (validation: its expectations name each bad value)
    write(data_dir, records)    the file, atomically, in the one byte format prepare has always written
    split_counts(data_dir)      images per split (model card, the KFP prepare component)
    sha256(data_dir)            the manifest's hash: the dataset's identity for lineage and the gate

`data_dir` may be the prepared folder or the manifest file itself (a path ending in ``.csv``). A bad file
is a `ManifestError` that names the file, the line, the column and the value.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from dbdgan.io_utils import atomic_write_text, file_sha256

if TYPE_CHECKING:
    import pandas as pd

FILENAME = "manifest.csv"
COLUMNS = (
    "id",
    "split",
    "source",
    "image",
    "mask",
    "width",
    "height",
    "channels",
    "blur_fraction",
    "image_sha256",
    "mask_sha256",
)
SPLITS = ("train", "val", "test")
INT_COLUMNS = ("width", "height", "channels")
NUMERIC_COLUMNS = (*INT_COLUMNS, "blur_fraction")
PATH_COLUMNS = ("image", "mask")  # relative to the prepared folder
BLUR_FRACTION_DIGITS = 6  # how write() stores blur_fraction

Row = dict[str, str]


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file and, for a bad value, its line and column."""

    def __init__(self, path: str | Path, reason: str, *, line: int | None = None, column: str | None = None) -> None:
        self.path, self.reason, self.line, self.column = Path(path), reason, line, column
        where = f"{self.path}" + (f" line {line}" if line is not None else "")
        where += f", column {column!r}" if column is not None else ""
        super().__init__(f"{where}: {reason}")


def manifest_path(data_dir: str | Path) -> Path:
    """The manifest of a prepared folder; a path ending in .csv is taken to be the manifest itself."""
    path = Path(data_dir)
    return path if path.suffix.lower() == ".csv" else path / FILENAME


def _existing(data_dir: str | Path) -> Path:
    path = manifest_path(data_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; run `dbdgan prepare` for this folder first")
    return path


def path_problem(rel: Any) -> str | None:
    """Why a manifest path (image or mask) cannot be used, or None: it must be relative, inside the folder."""
    if not isinstance(rel, str) or not rel:
        return "no path in manifest"
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts:
        return f"path {rel!r} is not relative inside the dataset folder"
    return None


def _value_problem(column: str, value: str) -> str | None:
    """Why one value of `column` is unusable, or None (the rules read() applies to every row)."""
    if column == "split":
        return None if value in SPLITS else f"unknown split {value!r}; allowed: {list(SPLITS)}"
    if column in PATH_COLUMNS:
        return path_problem(value)
    if column in INT_COLUMNS:
        try:
            number = int(value)
        except ValueError:
            return f"{value!r} is not a whole number"
        return None if number >= 1 else f"{value!r} must be at least 1"
    if column == "blur_fraction":
        try:
            fraction = float(value)
        except ValueError:
            return f"{value!r} is not a number"
        return None if math.isfinite(fraction) and 0 <= fraction <= 1 else f"{value!r} is not in [0, 1]"
    return None if value else "empty value"


def _check_header(path: Path, fieldnames: Iterable[str] | None) -> None:
    names = [] if fieldnames is None else list(fieldnames)
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise ManifestError(path, f"missing column(s) {missing}; has {names}")


def has_header(data_dir: str | Path) -> bool:
    """Whether the manifest's first line is exactly the header write() puts there (unreadable: False)."""
    path = manifest_path(data_dir)
    try:
        with path.open(newline="", encoding="utf-8", errors="replace") as handle:
            return tuple(next(csv.reader(handle), [])) == COLUMNS
    except OSError:
        return False


def read(data_dir: str | Path, split: str | None = None) -> list[Row]:
    """The manifest's rows (columns `COLUMNS`, values as str), in file order; only `split`'s when given.

    Every value is checked (a known split, relative paths, whole-number sizes, a fraction in [0, 1], no
    empty field): a bad one is a ManifestError naming the file, the line, the column and the value. A
    missing file is a FileNotFoundError; a split with no rows is a ManifestError listing those present.
    Columns beyond `COLUMNS` are ignored.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = _existing(data_dir)
    rows: list[Row] = []
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            _check_header(path, reader.fieldnames)
            for record in reader:
                line = reader.line_num
                if None in record or None in record.values():  # csv's marks of a longer or shorter row
                    got = sum(v is not None for k, v in record.items() if k is not None) + len(record.get(None, ()))
                    raise ManifestError(path, f"{len(record) - (None in record)} fields expected, got {got}",
                                        line=line)
                row = {c: record[c] for c in COLUMNS}
                for column, value in row.items():
                    problem = _value_problem(column, value)
                    if problem:
                        raise ManifestError(path, problem, line=line, column=column)
                rows.append(row)
    except UnicodeDecodeError as exc:
        raise ManifestError(path, f"not UTF-8 text ({exc})") from exc
    except csv.Error as exc:
        raise ManifestError(path, f"not a CSV table ({exc})") from exc
    if split is None:
        return rows
    chosen = [row for row in rows if row["split"] == split]
    if not chosen:
        present = sorted({row["split"] for row in rows})
        raise ManifestError(path, f"no rows with split={split!r} (splits present: {present})")
    return chosen


def read_table(data_dir: str | Path) -> pd.DataFrame:
    """The manifest as a frame of its `COLUMNS`: values as stored (str; numeric columns as numbers, NaN
    where unparsable; empty fields NaN), so that validation can report every bad value. Only the file and
    its header are checked: a missing file is a FileNotFoundError, anything else a ManifestError."""
    import pandas as pd

    path = _existing(data_dir)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise ManifestError(path, f"unreadable manifest: {exc}") from exc
    _check_header(path, frame.columns)
    frame = frame.loc[:, list(COLUMNS)].copy()
    for column in NUMERIC_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def text(records: Iterable[Mapping[str, Any]]) -> str:
    """The manifest's content for `records` (dicts holding exactly `COLUMNS`): sorted by id, blur_fraction
    with BLUR_FRACTION_DIGITS decimals, '\\n' line ends."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for record in sorted(records, key=lambda r: r["id"]):
        writer.writerow({**record, "blur_fraction": f"{float(record['blur_fraction']):.{BLUR_FRACTION_DIGITS}f}"})
    return buffer.getvalue()


def write(data_dir: str | Path, records: Iterable[Mapping[str, Any]]) -> Path:
    """Write the manifest of `records` (see text()) atomically: a reader sees the old file or the new one,
    never part of one. Returns its path."""
    path = manifest_path(data_dir)
    atomic_write_text(path, text(records))
    return path


def count(splits: Iterable[str]) -> dict[str, int]:
    """Rows per split name, sorted by name."""
    return dict(sorted(Counter(splits).items()))


def split_counts(data_dir: str | Path) -> dict[str, int]:
    """Images per split, sorted by split name. Needs only the `split` column, so that it also counts the
    stand-in manifests of tests and a manifest that validation is about to reject."""
    path = _existing(data_dir)
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if "split" not in (reader.fieldnames or []):
            raise ManifestError(path, f"missing column(s) ['split']; has {reader.fieldnames}")
        return count(row["split"] for row in reader)


def sha256(data_dir: str | Path) -> str:
    """sha256 of the manifest's bytes: it lists every file's hash, so it identifies the prepared dataset."""
    return file_sha256(_existing(data_dir))
