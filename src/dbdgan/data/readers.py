"""Find image/mask pairs in the folder layouts of the public DBD datasets and of users' own data.

Each reader returns `SamplePair`s plus the mask polarity of the source; prepare.py normalises every mask
to the project's convention (1 = blurred).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".gif", ".jpg", ".jpeg")
LOSSY_MASK_EXTENSIONS = (".jpg", ".jpeg")
IMAGE_DIR_NAMES = ("images", "image", "imgs", "img", "source", "src", "input", "inputs")
MASK_DIR_NAMES = ("masks", "mask", "gt", "gts", "groundtruth", "ground_truth", "labels", "label")
MASK_SUFFIXES = ("_gt", "-gt", "_mask", "-mask", "_label")
_SEARCH_DEPTH = 3
# SZU-BD as released (Sun et al., results repository BD_EFPN): the defocus photos in img/out-of-focus/, every
# photo again in img/ and the motion-blurred ones in img/motion/; masks in gt/, 255 = blurred
SZU_DEFOCUS_DIR = ("img", "out-of-focus")
SZU_OTHER_IMAGE_DIRS = (("img",), ("img", "motion"))
SZU_MASK_DIR = "gt"

log = logging.getLogger(__name__)


class LayoutError(ValueError):
    """The input folder does not have the expected layout; the message names the folder or files."""


@dataclass(frozen=True)
class SamplePair:
    id: str
    image: Path
    mask: Path


@dataclass(frozen=True)
class SourceSpec:
    """How a dataset stores its labels: default polarity (None = must be given) and mask strictness."""

    name: str
    polarity: str | None
    binarize: bool  # threshold non-binary masks at half scale instead of refusing them
    description: str


SOURCES: dict[str, SourceSpec] = {
    "cuhk": SourceSpec("cuhk", "blurred-white", False, "images/*.jpg + masks/*.png, 255 = blurred"),
    "dut": SourceSpec(
        "dut", "sharp-white", True, "DUT-DBD: source|images + gt|masks (any depth), in-focus white"
    ),
    # binarize: a few of the release's masks are anti-aliased (grey edges, under 1 % of their pixels)
    "szu": SourceSpec(
        "szu", "blurred-white", True, "SZU-BD as released: img/out-of-focus/*.jpg + gt/*.png, 255 = blurred"
    ),
    "folder": SourceSpec("folder", None, False, "images/ + masks/ with an explicit polarity"),
}


def _files(folder: Path, extensions: Iterable[str]) -> list[Path]:
    allowed = {e.lower() for e in extensions}
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in allowed)


def _match_key(stem: str) -> str:
    key = stem.lower()
    for suffix in MASK_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key


def _listing(paths: list[Path], limit: int = 10) -> str:
    shown = ", ".join(p.name for p in paths[:limit])
    return shown + (f" ... ({len(paths)} in all)" if len(paths) > limit else "")


def pair_folder(image_dir: Path, mask_dir: Path, id_prefix: str = "",
                skip_masks: Collection[str] = ()) -> list[SamplePair]:
    """Pair every image with the mask of the same stem; any unmatched file is an error that names it.

    skip_masks: match keys (lower-case stems) of masks that belong to no image here on purpose.
    """
    images = _files(image_dir, IMAGE_EXTENSIONS)
    if not images:
        raise LayoutError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {image_dir}")
    masks: dict[str, Path] = {}
    for mask in _files(mask_dir, MASK_EXTENSIONS):
        key = _match_key(mask.stem)
        if key in skip_masks:
            continue
        if key in masks:
            raise LayoutError(f"two masks for one image in {mask_dir}: {masks[key].name} and {mask.name}")
        masks[key] = mask
    pairs, missing, seen = [], [], set()
    for image in images:
        key = image.stem.lower()
        if key in seen:
            raise LayoutError(f"two images with the stem {image.stem!r} in {image_dir}")
        seen.add(key)
        mask = masks.get(key)
        if mask is None:
            missing.append(image)
        else:
            pairs.append(SamplePair(id_prefix + sanitize_id(image.stem), image, mask))
    _check_unique_ids(pairs)
    if missing:
        raise LayoutError(
            f"{len(missing)} image(s) in {image_dir} have no mask in {mask_dir}: {_listing(missing)}"
        )
    orphans = sorted(set(masks) - seen)
    if orphans:
        raise LayoutError(
            f"{len(orphans)} mask(s) in {mask_dir} have no image in {image_dir}: "
            f"{_listing([masks[k] for k in orphans])}"
        )
    return pairs


def _check_unique_ids(pairs: list[SamplePair]) -> None:
    """Two inputs whose ids differ only by characters sanitize_id replaces (or by case) would share files."""
    first: dict[str, SamplePair] = {}
    for pair in pairs:
        other = first.setdefault(pair.id.lower(), pair)
        if other is not pair:
            raise LayoutError(f"{other.image} and {pair.image} both become sample id {pair.id!r} "
                              "(file names are sanitised to letters, digits, '.', '-', '_'): rename one of them")


def _check_inside(root: Path, pairs: list[SamplePair]) -> None:
    """Symbolic links are followed only while they stay inside the dataset folder."""
    base = root.resolve()
    for pair in pairs:
        for path in (pair.image, pair.mask):
            target = path.resolve()
            if not target.is_relative_to(base):
                below = [p for p in (path, *path.parents) if p != root and p.is_relative_to(root)]
                link = next((p for p in below if p.is_symlink()), path)
                raise LayoutError(f"{link} is a symbolic link to {link.resolve()}, outside the dataset folder "
                                  f"{root}: refusing to read it (copy the file in instead)")


def sanitize_id(text: str) -> str:
    """A file-name-safe sample id (letters, digits, '-', '_', '.')."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return cleaned or "sample"


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise LayoutError(f"{what} folder {path} does not exist")
    return path


def _named_child(folder: Path, names: Iterable[str]) -> Path | None:
    children = {p.name.lower(): p for p in folder.iterdir() if p.is_dir()}
    for name in names:
        if name in children:
            return children[name]
    return None


def _pairs_in(folder: Path) -> list[tuple[Path, Path]]:
    """(image_dir, mask_dir) siblings directly inside `folder`: by name (images+masks, source+gt, ...)
    or by shared prefix (dut500-source + dut500-gt)."""
    image_dir = _named_child(folder, IMAGE_DIR_NAMES)
    mask_dir = _named_child(folder, MASK_DIR_NAMES)
    if image_dir is not None and mask_dir is not None:
        return [(image_dir, mask_dir)]
    children = {p.name.lower(): p for p in folder.iterdir() if p.is_dir()}
    found = []
    for name, child in sorted(children.items()):
        for image_token in IMAGE_DIR_NAMES:
            if name.endswith(image_token) and len(name) > len(image_token):
                prefix = name[: -len(image_token)]
                partner = next((children[prefix + t] for t in MASK_DIR_NAMES if prefix + t in children), None)
                if partner is not None:
                    found.append((child, partner))
                break
    return found


def discover_pairs(root: Path, max_depth: int = _SEARCH_DEPTH) -> list[tuple[Path, Path]]:
    """All (image_dir, mask_dir) pairs under `root`, breadth-first, not descending below a found pair."""
    found: list[tuple[Path, Path]] = []
    level = [root]
    for _ in range(max_depth + 1):
        next_level = []
        for folder in level:
            pairs = _pairs_in(folder)
            if pairs:
                found.extend(pairs)
            else:
                next_level.extend(
                    sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
                )
        level = next_level
    return found


def read_szu(root: Path) -> list[SamplePair]:
    """SZU-BD in the release's own layout: the photos of img/out-of-focus/ with their masks in gt/.

    The release's gt/ may also hold masks of its motion-blurred photos (img/motion/, and every photo again
    at img/NAME.jpg): motion blur is not defocus, so a mask whose photo is in img/ or img/motion/ but not in
    img/out-of-focus/ is skipped, with a note; a mask whose photo is nowhere is an error, as elsewhere.
    """
    image_dir = root.joinpath(*SZU_DEFOCUS_DIR)
    mask_dir = root / SZU_MASK_DIR
    if not image_dir.is_dir() or not mask_dir.is_dir():
        raise LayoutError(
            f"{root} is not in SZU-BD's layout: it needs {'/'.join(SZU_DEFOCUS_DIR)}/ (the defocus photos) and "
            f"{SZU_MASK_DIR}/ (their masks, 255 = blurred), as the release has them. For another layout of the "
            "same photos use data.source=folder (images/ + masks/) with data.polarity=blurred-white"
        )
    defocus = {image.stem.lower() for image in _files(image_dir, IMAGE_EXTENSIONS)}
    elsewhere = {image.stem.lower() for parts in SZU_OTHER_IMAGE_DIRS if root.joinpath(*parts).is_dir()
                 for image in _files(root.joinpath(*parts), IMAGE_EXTENSIONS)}
    masks = {_match_key(mask.stem) for mask in _files(mask_dir, MASK_EXTENSIONS)}
    motion = sorted((masks & elsewhere) - defocus)
    if motion:
        log.info("szu: skipped %d mask(s) in %s whose photos are not in %s (motion blur, not defocus): %s",
                 len(motion), mask_dir, image_dir, ", ".join(motion[:10]) + (" ..." if len(motion) > 10 else ""))
    pairs = pair_folder(image_dir, mask_dir, skip_masks=set(motion))
    _check_inside(root, pairs)
    return pairs


def read_source(source: str, root: Path) -> list[SamplePair]:
    """Image/mask pairs of a dataset folder in the layout of `source` (cuhk, dut, szu, folder)."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {sorted(SOURCES)} or 'synthetic'")
    root = _require_dir(Path(root), f"{source} input")
    if source in ("cuhk", "folder"):
        pairs = pair_folder(_require_dir(root / "images", source), _require_dir(root / "masks", source))
        _check_inside(root, pairs)
        return pairs
    if source == "szu":
        return read_szu(root)
    dirs = discover_pairs(root)
    if not dirs:
        raise LayoutError(
            f"no image/mask folders found under {root} (looked {_SEARCH_DEPTH} levels deep for "
            f"{'|'.join(IMAGE_DIR_NAMES)} beside {'|'.join(MASK_DIR_NAMES)}, or <prefix>source + <prefix>gt)"
        )
    pairs: list[SamplePair] = []
    for image_dir, mask_dir in dirs:
        prefix = (
            ""
            if len(dirs) == 1
            else sanitize_id(str(image_dir.parent.relative_to(root) / image_dir.name)) + "_"
        )
        pairs.extend(pair_folder(image_dir, mask_dir, prefix))
    _check_unique_ids(pairs)
    _check_inside(root, pairs)
    return pairs
