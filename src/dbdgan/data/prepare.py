"""`prepare`: turn a raw dataset (or the synthetic generator) into one prepared folder with a manifest.

Layout of `out_dir` (written as a whole, atomically: built in a temp dir beside it, then renamed):
    images/<id>.<ext>   RGB images (originals copied byte for byte when already RGB JPEG/PNG)
    masks/<id>.png      8-bit masks, 0 = in focus, 255 = blurred
    manifest.csv        one row per sample (dbdgan.data.manifest: its columns, reading, writing)
    contact_sheet.png   a few samples with their masks, for a person to look at
    prepare.json        the marker that this folder is a prepared output (source, count, EXIF orientations):
                        prepare replaces only an empty folder or one holding this marker
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dbdgan.data import manifest
from dbdgan.data.contact_sheet import save_contact_sheet
from dbdgan.data.imageio import (
    DEFAULT_MAX_PIXELS,
    POLARITIES,
    ImageError,
    encode_image,
    exif_orientation,
    image_to_rgb,
    load_mask,
    open_image,
)
from dbdgan.data.manifest import SPLITS
from dbdgan.data.manifest import read as read_manifest  # noqa: F401 - the name older callers import
from dbdgan.data.readers import LOSSY_MASK_EXTENSIONS, SOURCES, SamplePair, read_source
from dbdgan.data.synthetic import SyntheticOptions, generate_sample, sample_rng
from dbdgan.io_utils import atomic_dir, atomic_write_json
from dbdgan.progress import progress

MARKER = "prepare.json"
PNG_FORMAT = {"format": "PNG", "compress_level": 6}  # prepared masks and lossless-converted photos
# What a prepared folder written before the marker existed holds: such a folder may be replaced too.
_LEGACY_ENTRIES = frozenset({"images", "masks", manifest.FILENAME, "contact_sheet.png"})
DEFAULT_SPLIT = {"train": 0.8, "val": 0.1, "test": 0.1}
CONTACT_SHEET_SAMPLES = 16
_PARALLEL_MIN_ITEMS = 64  # below this a process pool costs more than it saves

Record = dict[str, Any]


# ----------------------------------------------------------------------------------------------- split


def _check_fractions(split: Mapping[str, float] | None) -> dict[str, float]:
    fractions = dict(DEFAULT_SPLIT if split is None else split)
    unknown = sorted(set(fractions) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split name(s) {unknown}; allowed: {list(SPLITS)}")
    if any(not (isinstance(v, int | float) and v >= 0) for v in fractions.values()):
        raise ValueError(f"split fractions must be non-negative numbers, got {fractions}")
    total = sum(fractions.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise ValueError(f"split fractions must sum to 1, got {fractions} (sum {total})")
    return {name: float(fractions[name]) for name in SPLITS if fractions.get(name, 0) > 0}


def stratified_split(
    ids: Sequence[str], blur_fractions: Sequence[float], split: Mapping[str, float] | None, seed: int
) -> dict[str, str]:
    """Assign each id to a split, deterministically and stratified by blur fraction.

    Samples are ordered by blur fraction (ties broken by a seeded shuffle); position i gets the split that
    is furthest behind its target count (f * (i + 1)), so every stretch of the blur range is divided in
    the requested proportions; labels are then shuffled within windows of about 1/min(fraction) samples,
    so which sample of a stretch lands where is random but seeded. Splits with a positive fraction are
    never left empty (given at least one sample per split).
    """
    fractions = _check_fractions(split)
    names = list(fractions)
    count = len(ids)
    if count < len(names):
        raise ValueError(f"{count} sample(s) cannot fill the {len(names)} non-empty splits {names}")
    if len(blur_fractions) != count:
        raise ValueError("ids and blur_fractions differ in length")
    rng = np.random.default_rng([int(seed), 1])
    by_id = sorted(range(count), key=lambda i: ids[i])  # independent of the input order
    tiebreak = rng.permutation(count)
    order = sorted(range(count), key=lambda k: (round(float(blur_fractions[by_id[k]]), 6), tiebreak[k]))
    order = [by_id[k] for k in order]
    target = np.array([fractions[n] for n in names])
    given = np.zeros(len(names))
    labels = []
    for position in range(count):
        behind = target * (position + 1) - given
        choice = int(np.argmax(behind))
        given[choice] += 1
        labels.append(choice)
    for name_index in range(len(names)):
        if given[name_index] == 0:  # tiny data: move a mid-range sample over from the largest split
            donor = int(np.argmax(given))
            slots = [p for p, label in enumerate(labels) if label == donor]
            labels[slots[len(slots) // 2]] = name_index
            given[donor] -= 1
            given[name_index] += 1
    window = max(2, math.ceil(1.0 / min(target)))
    for start in range(0, count, window):
        chunk = labels[start : start + window]
        labels[start : start + window] = [chunk[i] for i in rng.permutation(len(chunk))]
    return {ids[order[p]]: names[labels[p]] for p in range(count)}


# ---------------------------------------------------------------------------------------------- writers


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_pair(
    root: Path,
    sample_id: str,
    image_bytes: bytes,
    image_ext: str,
    mask: np.ndarray,
    shape: tuple[int, int, int],
) -> Record:
    """Write one image (given as file bytes) and its {0,1} mask under root; return its manifest record."""
    mask_bytes = encode_image(mask.astype(np.uint8) * 255, **PNG_FORMAT)
    image_rel, mask_rel = f"images/{sample_id}{image_ext}", f"masks/{sample_id}.png"
    (root / image_rel).write_bytes(image_bytes)
    (root / mask_rel).write_bytes(mask_bytes)
    height, width, channels = shape
    return {
        "id": sample_id,
        "image": image_rel,
        "mask": mask_rel,
        "width": width,
        "height": height,
        "channels": channels,
        "blur_fraction": float(mask.mean()),
        "image_sha256": _sha256(image_bytes),
        "mask_sha256": _sha256(mask_bytes),
    }


def _synthetic_task(args: tuple[Path, int, int, SyntheticOptions]) -> Record:
    root, seed, index, opts = args
    sample = generate_sample(sample_rng(seed, index), opts.size, opts)
    return _write_pair(root, f"synth_{index:06d}", sample.encoded, ".jpg", sample.mask, sample.image.shape)


def _real_task(args: tuple[Path, SamplePair, str, bool, int]) -> Record:
    """Check and copy one real pair: the image is decoded in full (truncation shows up here), copied
    byte for byte when it is an RGB JPEG/PNG without a rotation tag, else re-encoded as RGB PNG."""
    root, pair, polarity, binarize, max_pixels = args
    with open_image(pair.image, max_pixels) as image:
        orientation = exif_orientation(image)
        if image.format in ("JPEG", "PNG") and image.mode == "RGB" and orientation == 1:
            data, ext = pair.image.read_bytes(), (".jpg" if image.format == "JPEG" else ".png")
            shape = (image.height, image.width, 3)
        else:
            rgb = image_to_rgb(image)
            data, ext, shape = encode_image(rgb, **PNG_FORMAT), ".png", rgb.shape
    lossy = pair.mask.suffix.lower() in LOSSY_MASK_EXTENSIONS
    mask = load_mask(pair.mask, max_pixels, polarity, binarize=binarize or lossy)
    if mask.shape != shape[:2]:
        raise ImageError(
            pair.mask,
            f"mask size {mask.shape[1]}x{mask.shape[0]} differs from "
            f"image {pair.image} ({shape[1]}x{shape[0]})",
        )
    record = _write_pair(root, pair.id, data, ext, mask, shape)
    if orientation != 1:  # read as stored (the mask was drawn on the stored pixels); validation reports it
        record["exif_orientation"] = {"file": str(pair.image), "orientation": orientation}
    return record


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent: int) -> None:
    """Worker initializer: the worker is killed when the process that started it dies.

    A parent killed with SIGKILL runs no cleanup, and its workers would live on (holding memory) for good.
    Linux delivers the signal when the starting thread ends: the pool is created and used by one thread
    (`_run`). If the parent died before this ran, the worker exits at once.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def _run(task: Callable[[Any], Record], jobs: list[Any], workers: int) -> list[Record]:
    """Run the jobs in order; in worker processes when there are enough of them to pay for the pool."""
    if workers <= 1 or len(jobs) < _PARALLEL_MIN_ITEMS:
        return [task(job) for job in progress(jobs, "prepare", unit="img")]
    with ProcessPoolExecutor(max_workers=workers, initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
        done = pool.map(task, jobs, chunksize=max(1, len(jobs) // (workers * 8)))
        return list(progress(done, "prepare", total=len(jobs), unit="img"))


# ---------------------------------------------------------------------------------------------- manifest


def _contact_sheet(root: Path, records: list[Record], samples: int) -> None:
    picked = sorted(records, key=lambda r: r["id"])
    step = max(1, len(picked) // samples)
    picked = picked[::step][:samples]
    pairs, captions = [], []
    for record in picked:
        with Image.open(root / record["image"]) as image:
            thumb = image.convert("RGB")
            thumb.thumbnail((320, 320))
        with Image.open(root / record["mask"]) as mask:
            small = mask.resize(thumb.size, Image.Resampling.NEAREST)
        pairs.append((np.asarray(thumb), np.asarray(small)))
        captions.append(f"{record['id'][:22]} {record['split']} blur={record['blur_fraction']:.2f}")
    save_contact_sheet(root / "contact_sheet.png", pairs, captions)


def _is_prepared_output(folder: Path) -> bool:
    """A folder written by prepare: it holds the marker, or (written before the marker) only prepare's files."""
    if (folder / MARKER).is_file():
        return True
    entries = {p.name for p in folder.iterdir()}
    if not entries or not entries <= _LEGACY_ENTRIES or manifest.FILENAME not in entries:
        return False
    return manifest.has_header(folder)


def check_replaceable(out_dir: Path, input_dir: Path | None) -> None:
    """Refuse an output folder whose replacement would destroy something prepare did not write."""
    out = Path(os.path.abspath(out_dir))
    if input_dir is not None and Path(os.path.abspath(input_dir)).is_relative_to(out):
        raise ValueError(f"output folder {out} holds the input {input_dir}: replacing it would delete the input")
    if not (out.exists() or out.is_symlink()):
        return
    if out.is_symlink() or not out.is_dir():
        raise ValueError(f"output {out} exists and is not a folder; refusing to replace it")
    if any(out.iterdir()) and not _is_prepared_output(out):
        raise ValueError(f"refusing to replace {out}: it is not a folder written by `dbdgan prepare` (no {MARKER}); "
                         "choose a new or empty output folder")


# ----------------------------------------------------------------------------------------------- entry


def prepare_dataset(
    source: str,
    out_dir: Path,
    *,
    input_dir: Path | None = None,
    polarity: str | None = None,
    seed: int = 0,
    split: Mapping[str, float] | None = None,
    synthetic: SyntheticOptions | dict[str, Any] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
) -> Path:
    """Prepare `source` ("synthetic", "cuhk", "dut", "szu", "folder") into `out_dir`; return manifest.csv.

    Masks are normalised to 1 = blurred using `polarity` (None = the source's own convention; required for
    "folder"). `workers` processes (default: up to 2) generate or check samples in parallel; the output
    does not depend on it.
    """
    out_dir = Path(out_dir)
    fractions = _check_fractions(split)
    workers = max(1, min(2, os.cpu_count() or 1)) if workers is None else max(1, int(workers))
    if polarity is not None and polarity not in POLARITIES:
        raise ValueError(f"polarity must be one of {POLARITIES} or None, got {polarity!r}")

    task: Callable[[Any], Record]
    if source == "synthetic":
        if input_dir is not None:
            raise ValueError(
                "source 'synthetic' takes no input_dir; set synthetic.texture_dir for photo textures"
            )
        opts = SyntheticOptions.from_any(synthetic)
        task, job_args = _synthetic_task, [(seed, i, opts) for i in range(opts.num_images)]
    elif source in SOURCES:
        if input_dir is None:
            raise ValueError(f"source {source!r} needs input_dir ({SOURCES[source].description})")
        spec = SOURCES[source]
        resolved = polarity or spec.polarity
        if resolved is None:
            raise ValueError(
                f"source {source!r} needs polarity: one of {POLARITIES} (which mask colour is blurred?)"
            )
        pairs = read_source(source, Path(input_dir))
        task, job_args = _real_task, [(p, resolved, spec.binarize, max_pixels) for p in pairs]
    else:
        raise ValueError(f"unknown source {source!r}; expected 'synthetic' or one of {sorted(SOURCES)}")

    check_replaceable(out_dir, input_dir if source != "synthetic" else None)
    with atomic_dir(out_dir) as root:
        (root / "images").mkdir()
        (root / "masks").mkdir()
        records = _run(task, [(root, *args) for args in job_args], workers)
        oriented = {r["id"]: r.pop("exif_orientation") for r in records if "exif_orientation" in r}
        assignment = stratified_split(
            [r["id"] for r in records], [r["blur_fraction"] for r in records], fractions, seed
        )
        for record in records:
            record["split"] = assignment[record["id"]]
            record["source"] = source
        manifest.write(root, records)
        _contact_sheet(root, records, CONTACT_SHEET_SAMPLES)
        atomic_write_json(root / MARKER, {"format": 1, "source": source, "samples": len(records),
                                          "exif_orientation": dict(sorted(oriented.items()))})
    return manifest.manifest_path(out_dir)


def read_marker(data_dir: Path) -> dict[str, Any]:
    """prepare.json of a prepared folder ({} for a folder prepared before the marker existed)."""
    path = Path(data_dir) / MARKER
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
