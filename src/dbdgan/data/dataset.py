"""Torch dataset over a prepared folder (manifest.csv), with joint image/mask augmentation.

Augmentations never change what is blurred: random scale+crop (bounded zoom), horizontal flip and light
colour jitter; no blur, sharpening, noise or JPEG. Randomness is a pure function of (seed, epoch, index),
so a run is reproducible whatever the worker count; `set_epoch` writes the epoch into shared memory so
that persistent DataLoader workers see it too.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from dbdgan.data import manifest
from dbdgan.data.imageio import DEFAULT_MAX_PIXELS, ImageError, image_to_rgb, load_mask, open_image
from dbdgan.data.manifest import SPLITS

Box = tuple[float, float, float, float]  # left, top, right, bottom in pixels, as PIL's resize takes it


class DBDDataset(Dataset):
    """Samples of one split: dict(image=float32 [3,H,W] in [0,1], mask=float32 [1,H,W] in {0,1}, id=str).

    size: output side (square, image bilinear+antialias, mask nearest); None keeps the native resolution
    (evaluation, batch 1), where augmentation is limited to flip and colour jitter.
    """

    def __init__(
        self,
        data_dir: Path,
        split: str,
        size: int | None,
        augment: bool,
        seed: int = 0,
        *,
        scale: tuple[float, float] = (0.5, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        jitter: float = 0.1,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if size is not None and size < 8:
            raise ValueError(f"size must be None or >= 8, got {size}")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < low <= high <= 1 (crop area fraction), got {scale}")
        self.data_dir = Path(data_dir)
        self.rows = manifest.read(self.data_dir, split)
        self.split, self.size, self.augment, self.seed = split, size, augment, int(seed)
        self.scale, self.ratio, self.hflip, self.jitter = scale, ratio, hflip, jitter
        self.max_pixels = max_pixels
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of `epoch` (visible to already running workers)."""
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    @property
    def ids(self) -> list[str]:
        return [row["id"] for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def _load(self, row: dict[str, str], box: Box | None) -> tuple[Image.Image, Image.Image, Box, Box]:
        """Decode image and mask; returns them with the crop box in the image's and the mask's coordinates.

        When the output is smaller than the crop, a JPEG is decoded at a reduced scale (draft mode) that
        still covers the output size, so large photos are cheap to load at training resolution.
        """
        image_path, mask_path = self.data_dir / row["image"], self.data_dir / row["mask"]
        width, height = int(row["width"]), int(row["height"])
        box = box or (0.0, 0.0, float(width), float(height))
        draft = None
        if self.size is not None:
            draft = (
                math.ceil(width * self.size / (box[2] - box[0])),
                math.ceil(height * self.size / (box[3] - box[1])),
            )
        image = open_image(image_path, self.max_pixels, draft_size=draft)
        if image.mode != "RGB":
            image = Image.fromarray(image_to_rgb(image))
        # by the rule validation checked it with: 0/255 (or 0/1, 16-bit, ...) labels, read as 0/255 grey
        mask = Image.fromarray(np.multiply(load_mask(mask_path, self.max_pixels), 255, dtype=np.uint8))
        if mask.size != (width, height):
            raise ImageError(mask_path, f"size {mask.size} differs from the manifest's {(width, height)}")
        factor = max(1, round(width / image.width))  # JPEG draft decodes at 1/factor scale
        if factor not in (1, 2, 4, 8) or image.size != (math.ceil(width / factor), math.ceil(height / factor)):
            raise ImageError(image_path, f"size {image.size} differs from the manifest's {(width, height)}")
        return image, mask, (box[0] / factor, box[1] / factor, box[2] / factor, box[3] / factor), box

    def _crop_box(self, rng: np.random.Generator, width: int, height: int) -> Box:
        """Random crop (area fraction in `scale`, aspect in `ratio` times the photo's), as a float box for PIL.

        The aspect is relative to the photo's so that a crop is squashed to the square input as the whole
        photo is at validation and evaluation: small crops (multi-scale training) keep that distortion too.
        """
        area = width * height * rng.uniform(*self.scale)
        aspect = width / height * math.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
        crop_w = min(width, math.sqrt(area * aspect))
        crop_h = min(height, math.sqrt(area / aspect))
        left = rng.uniform(0, width - crop_w)
        top = rng.uniform(0, height - crop_h)
        return (left, top, left + crop_w, top + crop_h)

    def _jitter(self, rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
        """Brightness, contrast and saturation of float [H, W, 3] in [0, 1], each by 1 +- jitter.

        numpy, not torch: a loader running in the training process (num_workers=0) must not wake torch's
        intra-op threads for such small arrays.
        """
        brightness, contrast, saturation = rng.uniform(1 - self.jitter, 1 + self.jitter, 3).tolist()
        image = image * np.float32(brightness)
        grey = image @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        mean = np.float32(grey.mean())
        image = (image - grey[:, :, None]) * np.float32(saturation) + grey[:, :, None]
        image = (image - mean) * np.float32(contrast) + mean
        return np.clip(image, 0.0, 1.0, out=image)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        row = self.rows[index]
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.augment else None
        box = None
        if rng is not None and self.size is not None:
            box = self._crop_box(rng, int(row["width"]), int(row["height"]))
        image, mask, image_box, mask_box = self._load(row, box)
        if self.size is not None:
            target = (self.size, self.size)
            if target != image.size or image_box != (0.0, 0.0, image.width, image.height):
                image = image.resize(target, Image.Resampling.BILINEAR, box=image_box, reducing_gap=None)
            if target != mask.size or mask_box != (0.0, 0.0, mask.width, mask.height):
                mask = mask.resize(target, Image.Resampling.NEAREST, box=mask_box)
        pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)
        labels = np.asarray(mask, dtype=np.uint8) > 127
        if rng is not None:
            if rng.random() < self.hflip:
                pixels, labels = pixels[:, ::-1], labels[:, ::-1]
            if self.jitter > 0:
                pixels = self._jitter(rng, pixels)
        image_t = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
        mask_t = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32))[None]
        return {"image": image_t, "mask": mask_t, "id": row["id"]}
