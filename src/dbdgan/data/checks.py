"""Data checks: a prepared dataset folder against a Great Expectations suite before anything trains on it.

The manifest alone cannot say whether a JPEG is truncated or a mask is grey, so every file is opened once
to compute per-row facts (readable, mode, sizes, mask values, recomputed blur fraction and hashes), through
`dbdgan.data.imageio` in report mode: by the very rules training and evaluation load them with, so that a
file validation passes is a file they can read. One GX suite then runs over manifest + facts; GX's
unexpected-row lists are mapped back to file names so that a failure says which file broke which
expectation. Data Docs (HTML) and a JSON summary land in report_dir.
"""

from __future__ import annotations

import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from dbdgan.data import manifest as manifest_file
from dbdgan.data.imageio import DEFAULT_MAX_PIXELS, FileReport, inspect_image, inspect_mask
from dbdgan.data.manifest import COLUMNS as MANIFEST_COLUMNS
from dbdgan.data.manifest import SPLITS
from dbdgan.io_utils import atomic_dir, atomic_write_json
from dbdgan.progress import progress

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
BLUR_FRACTION_TOLERANCE = 1e-3  # the manifest may store a rounded fraction
FACT_COLUMNS = (
    "image_sha256_actual", "image_error", "image_mode", "image_width", "image_height", "mask_sha256_actual",
    "mask_error", "mask_width", "mask_height", "mask_non_binary", "blur_fraction_actual",
)  # fmt: skip
DOCS_SITE = "dbdgan"
ROW = "row"  # manifest row number: the unique key GX reports failing rows by
# Fact and manifest columns that describe the mask file; every other column is reported by image file.
MASK_SIDE_COLUMNS = frozenset(
    {
        "mask",
        "mask_sha256",
        "mask_error",
        "mask_non_binary",
        "mask_width",
        "mask_height",
        "mask_sha256_actual",
    }
)


class DataCheckError(ValueError):
    """A prepared dataset failed validation; `report` holds the full result when the suite ran."""

    def __init__(self, message: str, report: ValidationReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class Failure:
    """One failed expectation: what was expected, why it matters, and each offending file with its value."""

    expectation: str
    notes: str
    severity: str
    files: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    def describe(self, limit: int = 20) -> str:
        head = f"{self.expectation}: {self.notes}"
        lines = [f"    {d}" for d in self.details[:limit]]
        if len(self.details) > limit:
            lines.append(f"    ... and {len(self.details) - limit} more (see validation.json)")
        return "\n".join([head, *lines])


@dataclass
class ValidationReport:
    """Outcome of one validation run; also serialised to report_dir/validation.json."""

    success: bool
    data_dir: Path
    n_rows: int
    n_images_on_disk: int
    split_counts: dict[str, int]
    evaluated_expectations: int
    failures: list[Failure]
    warnings: list[Failure]
    data_docs_index: Path
    json_path: Path
    duration_s: float
    notes: list[str] = field(default_factory=list)  # facts that are not failures, e.g. EXIF orientations

    def message(self) -> str:
        if self.success:
            return (
                f"{self.data_dir}: all {self.evaluated_expectations} expectations passed ({self.n_rows} rows)"
            )
        parts = [
            f"{self.data_dir}: {len(self.failures)} of {self.evaluated_expectations} expectations failed"
        ]
        parts += [f"  - {f.describe()}" for f in self.failures]
        parts.append(f"Data Docs: {self.data_docs_index}")
        return "\n".join(parts)

    @property
    def summary(self) -> dict[str, Any]:
        """The headline numbers (what the CLI prints); validation.json has the per-file detail."""
        return {
            "success": self.success,
            "n_rows": self.n_rows,
            "split_counts": self.split_counts,
            "evaluated_expectations": self.evaluated_expectations,
            "failed_expectations": len(self.failures),
            "warnings": [f.describe() for f in self.warnings],
            "notes": self.notes,
            "data_docs": str(self.data_docs_index),
            "report": str(self.json_path),
            "duration_s": self.duration_s,
        }

    def to_dict(self) -> dict[str, Any]:
        """What validation.json holds: paths relative to its folder and no timing, so that the same data gives
        the same file on every machine (DVC hashes it; the training stages depend on it)."""
        out = asdict(self)
        del out["duration_s"]
        for key in ("data_dir", "data_docs_index", "json_path"):
            out[key] = os.path.relpath(Path(out[key]).resolve(), Path(self.json_path).resolve().parent)
        return out


def validate_dataset(
    data_dir: Path,
    report_dir: Path,
    *,
    min_size: int = 32,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ValidationReport:
    """Run the suite on data_dir/manifest.csv and its files; raise DataCheckError on any failure.

    The report (Data Docs + validation.json) is written before raising, so a failed run can be inspected.
    """
    start = time.perf_counter()
    data_dir, report_dir = Path(data_dir), Path(report_dir).resolve()  # GX needs an absolute docs folder
    json_path = report_dir / "validation.json"
    try:
        manifest = _read_manifest(data_dir)
    except DataCheckError as exc:
        atomic_write_json(json_path, {"success": False, "data_dir": str(data_dir), "error": str(exc)})
        raise
    on_disk = _images_on_disk(data_dir)
    table = pd.concat([manifest, _facts(data_dir, manifest, max_pixels)], axis=1)
    table[ROW] = np.arange(len(table))
    table["same_image_in_other_splits"], table["same_image_in_same_split"] = _duplicates(table)
    table["blur_fraction_abs_error"] = (
        table["blur_fraction_actual"].astype(float) - table["blur_fraction"]
    ).abs()

    docs_dir = report_dir / "data_docs"
    with atomic_dir(docs_dir) as tmp_docs:
        results = _run_suite(table, len(on_disk), min_size, tmp_docs)
    failures, warned = _failures(results, table, on_disk, manifest)
    report = ValidationReport(
        success=not failures,
        data_dir=data_dir,
        n_rows=len(manifest),
        n_images_on_disk=len(on_disk),
        split_counts=_split_counts(manifest),
        evaluated_expectations=len(results.results),
        failures=failures,
        warnings=warned,
        data_docs_index=docs_dir / "index.html",
        json_path=json_path,
        duration_s=round(time.perf_counter() - start, 3),
        notes=_orientation_notes(data_dir),
    )
    atomic_write_json(json_path, report.to_dict())
    if failures:
        raise DataCheckError(report.message(), report)
    return report


def _orientation_notes(data_dir: Path) -> list[str]:
    """Source photos with an EXIF orientation tag, as prepare recorded them: used as stored, shown rotated."""
    from dbdgan.data.prepare import read_marker

    oriented = read_marker(data_dir).get("exif_orientation") or {}
    if not oriented:
        return []
    head = (f"{len(oriented)} image(s) carry an EXIF orientation tag: they are used as stored, the way their "
            "masks were drawn, so a photo viewer shows them rotated or mirrored")
    return [head, *(f"{sample_id}: orientation {entry['orientation']} ({entry['file']})"
                    for sample_id, entry in oriented.items())]


def _read_manifest(data_dir: Path) -> pd.DataFrame:
    """The manifest's raw values (dbdgan.data.manifest.read_table): bad values are the suite's to report."""
    try:
        return manifest_file.read_table(data_dir)
    except (FileNotFoundError, manifest_file.ManifestError) as exc:
        raise DataCheckError(str(exc)) from exc


def _split_counts(manifest: pd.DataFrame) -> dict[str, int]:
    """Rows of each split, every split named (an empty one as 0), in SPLITS order."""
    counts = manifest_file.count(manifest["split"].dropna())
    return {split: counts.get(split, 0) for split in SPLITS}


def _images_on_disk(data_dir: Path) -> list[str]:
    """Image files under data_dir/images, as manifest-style relative paths."""
    folder = data_dir / "images"
    if not folder.is_dir():
        return []
    return sorted(
        p.relative_to(data_dir).as_posix()
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def _duplicates(table: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Per row, the other files with the same image bytes: (those in other splits, those in the same split).

    Hashes are of the bytes on disk (the manifest's when a file is unreadable), so a stale manifest cannot
    hide a leak.
    """
    sha = table["image_sha256_actual"].fillna(table["image_sha256"])
    groups: dict[str, list[int]] = {}
    for pos, value in enumerate(sha):
        if isinstance(value, str):
            groups.setdefault(value, []).append(pos)
    splits, images = table["split"].tolist(), table["image"].tolist()
    across: list[str | None] = [None] * len(table)
    within: list[str | None] = [None] * len(table)
    for members in groups.values():
        for pos in members if len(members) > 1 else []:
            other = [m for m in members if m != pos]
            across[pos] = (
                ", ".join(f"{splits[m]}: {images[m]}" for m in other if splits[m] != splits[pos]) or None
            )
            within[pos] = ", ".join(str(images[m]) for m in other if splits[m] == splits[pos]) or None
    return (
        pd.Series(across, index=table.index, dtype=object),
        pd.Series(within, index=table.index, dtype=object),
    )


# ---------------------------------------------------------------- per-file facts


def _facts(data_dir: Path, manifest: pd.DataFrame, max_pixels: int) -> pd.DataFrame:
    """Open every image and mask once (threads: PIL decodes and hashlib hash without the GIL)."""
    rows = list(zip(manifest["image"], manifest["mask"], strict=True))
    with warnings.catch_warnings():
        # Size is checked against max_pixels ourselves; PIL's own warning would only be noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            facts = list(progress(pool.map(lambda r: _row_facts(data_dir, r[0], r[1], max_pixels), rows),
                                  "validate", total=len(rows), unit="img"))
    return pd.DataFrame(facts, index=manifest.index, columns=FACT_COLUMNS)


def _inspect(data_dir: Path, rel: Any, max_pixels: int, mask: bool) -> FileReport:
    """The file a manifest path names, read in report mode (a path outside the folder is not opened)."""
    problem = manifest_file.path_problem(rel)
    if problem:
        return FileReport(Path(str(rel)), error=problem)
    path = data_dir / rel
    return inspect_mask(path, max_pixels) if mask else inspect_image(path, max_pixels)


def _row_facts(data_dir: Path, image_rel: Any, mask_rel: Any, max_pixels: int) -> dict[str, Any]:
    image = _inspect(data_dir, image_rel, max_pixels, mask=False)
    mask = _inspect(data_dir, mask_rel, max_pixels, mask=True)
    return {
        "image_sha256_actual": image.sha256,
        "image_error": image.error,
        "image_mode": image.mode,
        "image_width": image.width,
        "image_height": image.height,
        "mask_sha256_actual": mask.sha256,
        "mask_error": mask.error,
        "mask_width": mask.width,
        "mask_height": mask.height,
        "mask_non_binary": mask.label_error,
        "blur_fraction_actual": mask.blur_fraction,
    }


# ---------------------------------------------------------------- the GX suite


def _expectations(n_on_disk: int, min_size: int) -> list[Any]:
    """The suite: each expectation carries `notes` saying what breaks downstream when it fails."""
    import great_expectations.expectations as gxe

    def pair(a: str, b: str, notes: str) -> Any:
        return gxe.ExpectColumnPairValuesToBeEqual(
            column_A=a, column_B=b, ignore_row_if="either_value_is_missing", notes=notes
        )

    suite: list[Any] = [
        gxe.ExpectColumnValuesToNotBeNull(column=c, notes=f"manifest column {c} must be filled in")
        for c in MANIFEST_COLUMNS
    ]
    suite += [
        gxe.ExpectColumnValuesToBeUnique(column=c, notes=f"each {c} must appear once in the manifest")
        for c in ("id", "image", "mask")
    ]
    suite += [
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS), notes="unknown split name"),
        gxe.ExpectColumnDistinctValuesToContainSet(
            column="split", value_set=list(SPLITS), notes="every split must be non-empty"
        ),
        gxe.ExpectTableRowCountToEqual(
            value=n_on_disk, notes="manifest rows must match the image files in images/"
        ),
        gxe.ExpectColumnValuesToBeNull(
            column="same_image_in_other_splits", notes="leakage: the same image bytes are in another split"
        ),
        gxe.ExpectColumnValuesToBeNull(
            column="same_image_in_same_split",
            severity="warning",
            notes="duplicate image within one split (weighs it twice)",
        ),
        gxe.ExpectColumnValuesToBeNull(column="image_error", notes="image must exist and decode"),
        gxe.ExpectColumnValuesToBeInSet(column="image_mode", value_set=["RGB"], notes="image must be RGB"),
        gxe.ExpectColumnValuesToBeInSet(
            column="channels", value_set=[3], notes="manifest channels must be 3"
        ),
        gxe.ExpectColumnValuesToBeNull(column="mask_error", notes="mask must exist and decode"),
        gxe.ExpectColumnValuesToBeNull(
            column="mask_non_binary", notes="mask must be binary 0/255 (255 = blurred)"
        ),
        pair("image_width", "width", "image width must equal the manifest width"),
        pair("image_height", "height", "image height must equal the manifest height"),
        pair("mask_width", "image_width", "mask width must equal the image width"),
        pair("mask_height", "image_height", "mask height must equal the image height"),
        gxe.ExpectColumnValuesToBeBetween(
            column="image_width", min_value=min_size, notes=f"image narrower than min_size={min_size}"
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="image_height", min_value=min_size, notes=f"image lower than min_size={min_size}"
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="blur_fraction", min_value=0, max_value=1, notes="blur fraction must lie in [0, 1]"
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="blur_fraction_abs_error",
            max_value=BLUR_FRACTION_TOLERANCE,
            notes="manifest blur_fraction must match the mask",
        ),
        pair("image_sha256_actual", "image_sha256", "image bytes changed since the manifest was written"),
        pair("mask_sha256_actual", "mask_sha256", "mask bytes changed since the manifest was written"),
    ]
    return suite


def _run_suite(table: pd.DataFrame, n_on_disk: int, min_size: int, docs_dir: Path) -> Any:
    """One checkpoint run in an in-memory GX context; Data Docs are rendered into docs_dir."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # earlier 1.x releases phone home by default
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    for site in list(context.list_data_docs_sites()):  # the default site would litter a temp dir
        context.delete_data_docs_site(site)
    context.add_data_docs_site(
        DOCS_SITE,
        {
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
        },
    )
    batch = (
        context.data_sources.add_pandas("prepared")
        .add_dataframe_asset("manifest_with_facts")
        .add_batch_definition_whole_dataframe("all_rows")
    )
    suite = context.suites.add(
        gx.ExpectationSuite(name="dbdgan_prepared_dataset", expectations=_expectations(n_on_disk, min_size))
    )
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="dataset", data=batch, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name="validate_dataset",
            validation_definitions=[definition],
            actions=[UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE])],
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [ROW]},
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": table})
    return next(iter(result.run_results.values()))


# ---------------------------------------------------------------- results -> file names


def _failures(
    results: Any, table: pd.DataFrame, on_disk: list[str], manifest: pd.DataFrame
) -> tuple[list[Failure], list[Failure]]:
    failures: list[Failure] = []
    warned: list[Failure] = []
    for res in results.results:
        if res.success:
            continue
        config = res.expectation_config
        kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "ignore_row_if")}
        columns = [kwargs[k] for k in ("column", "column_A", "column_B") if k in kwargs]
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k not in ("column_A", "column_B"))
        if "column_A" in kwargs:
            args = f"{kwargs['column_A']} == {kwargs['column_B']}"
        name = f"{config.type}({args})"
        files, details = _offenders(res, table, columns, on_disk, manifest)
        severity = str(getattr(config.severity, "value", config.severity)).lower()
        failure = Failure(
            expectation=name, notes=str(config.notes or ""), severity=severity, files=files, details=details
        )
        (warned if severity == "warning" else failures).append(failure)
    return failures, warned


def _offenders(
    res: Any, table: pd.DataFrame, columns: list[str], on_disk: list[str], manifest: pd.DataFrame
) -> tuple[list[str], list[str]]:
    """Failing file names and a `file: value` line each, from GX's unexpected rows or observed value."""
    if res.exception_info and res.exception_info.get("raised_exception"):
        return [], [f"expectation raised: {res.exception_info.get('exception_message')}"]
    result = res.result or {}
    index = result.get("unexpected_index_list")
    if index:
        path_col = "mask" if columns and columns[0] in MASK_SIDE_COLUMNS else "image"
        files, details = [], []
        for entry in index:
            row = table.iloc[int(entry[ROW])]
            name = next(
                (row[c] for c in (path_col, "image") if isinstance(row[c], str)),
                f"manifest.csv line {int(entry[ROW]) + 2}",
            )
            values = ", ".join(f"{c}={_plain(row[c])}" for c in dict.fromkeys(columns))
            files.append(name)
            details.append(f"{name}: {values}")
        return files, details
    if "partial_missing_list" in result:
        return [], [f"no rows in split(s) {result['partial_missing_list']}"]
    if res.expectation_config.type == "expect_table_row_count_to_equal":
        details = [f"observed {result['observed_value']!r}"]
        listed = set(manifest["image"].dropna())
        extra = [p for p in on_disk if p not in listed]
        absent = sorted(listed - set(on_disk))
        details += [f"{p}: on disk but not in the manifest" for p in extra]
        details += [f"{p}: in the manifest but not under images/" for p in absent]
        return extra + absent, details
    return [], [f"result: {result}"]


def _plain(value: Any) -> Any:
    """Show NaN as None and whole floats (int columns with gaps become float) as ints."""
    value = value.item() if isinstance(value, np.generic) else value
    if isinstance(value, float):
        return None if np.isnan(value) else int(value) if value.is_integer() else value
    return value
