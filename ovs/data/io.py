"""Reading images and label maps from the on-disk layouts, with errors that name the file and the fix.

Every reader validates at the boundary (docs/architecture.md, "Dataset contract"): a missing root or split names the
expected path and the ``tools/prepare_datasets`` script that creates it; a label value >= K that is not the ignore
value, an unreadable image and an image/label size mismatch name the offending file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ovs.data.constants import DEFAULT_ROOT, IGNORE_INDEX, ROOT_ENV_VAR


class DatasetNotFoundError(FileNotFoundError):
    """A dataset root, split directory or annotation file is missing."""


class DatasetFormatError(ValueError):
    """A file exists but its content violates the dataset's format."""


def resolve_root(root: str | os.PathLike[str] | None) -> Path:
    """Datasets root: ``root`` if given, else ``$DETECTRON2_DATASETS``, else ``./datasets`` (maskclippp.md §7.2)."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get(ROOT_ENV_VAR, DEFAULT_ROOT))


def prepare_hint(script: str | None) -> str:
    """Sentence telling the user how to create a missing path (``script`` is a ``tools/prepare_datasets`` file)."""
    if script is None:
        return "Download it as described in docs/datasets.md."
    return f"Create it with `python tools/prepare_datasets/{script} --root <datasets root>` (see docs/datasets.md)."


def require_path(path: Path, what: str, script: str | None) -> Path:
    """Return ``path`` if it exists, else raise :class:`DatasetNotFoundError` naming it and the prepare script."""
    if not path.exists():
        raise DatasetNotFoundError(
            f"{what} not found: expected {path}. {prepare_hint(script)} "
            f"The datasets root is the `root` argument, else ${ROOT_ENV_VAR}, else {DEFAULT_ROOT}."
        )
    return path


_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
"""PIL modes of single-channel 16-bit images (PIL opens a 16-bit grayscale PNG as ``I;16``, some TIFFs as ``I``)."""


def _rgb_tensor(img: Image.Image) -> torch.Tensor:
    """RGB ``uint8 [3, H, W]`` of an (already oriented) PIL image; see :func:`image_to_tensor`."""
    if img.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(img).astype(np.float64)  # [H, W]
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise DatasetFormatError(f"Image mode {img.mode!r} holds values outside 0..65535; save it as 8 or 16 bit.")
        gray = np.round(values * (255.0 / 65535.0)).astype(np.uint8)
        array = np.repeat(gray[..., None], 3, axis=-1)  # [H, W, 3]
    elif img.mode == "F":
        raise DatasetFormatError("Floating-point images (PIL mode 'F') have no defined value range; save the image "
                                 "as an 8- or 16-bit PNG / JPEG or pass a tensor with value_range.")
    else:
        array = np.asarray(img.convert("RGB"))  # [H, W, 3]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB ``uint8 [3, H, W]`` from a PIL image (not modified), EXIF orientation applied.

    16-bit grayscale images (``I;16`` / ``I``) are scaled to ``0..255`` (``round(v * 255 / 65535)``) instead of
    PIL's ``convert("RGB")``, which clips every value above 255; 16-bit RGB PNGs are reduced to 8 bits by PIL
    itself (high byte). Floating-point images (mode ``F``) have no defined range and are rejected.
    """
    return _rgb_tensor(ImageOps.exif_transpose(img))


def read_image(path: str | os.PathLike[str]) -> torch.Tensor:
    """RGB image as ``uint8 [3, H, W]``, not normalised, EXIF orientation applied (as detectron2's ``read_image``),
    16-bit grayscale scaled to 8 bits (:func:`image_to_tensor`); raises :class:`DatasetFormatError` naming
    unreadable files."""
    try:
        with Image.open(path) as img:
            ImageOps.exif_transpose(img, in_place=True)  # no copy when there is nothing to rotate
            return _rgb_tensor(img)
    except DatasetFormatError as err:
        raise DatasetFormatError(f"Cannot read image {path}: {err}") from err
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise DatasetFormatError(f"Cannot read image {path}: {err}. Re-download or re-extract this file.") from err


def read_label_array(path: Path) -> np.ndarray:
    """Raw single-channel label map (uint8 PNG, palette PNG indices, or uint16 TIFF) as ``[H, W]`` numpy array."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I;16", "I;16B", "I;16L", "I"):
                raise DatasetFormatError(
                    f"Label map {path} has image mode {img.mode!r}; expected a single-channel PNG or a uint16 TIFF."
                )
            array = np.array(img)
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise DatasetFormatError(f"Cannot read label map {path}: {err}. Re-run the prepare script.") from err
    return array


def read_label(
    path: Path,
    num_classes: int,
    ignore_values: Sequence[int] = (255,),
    script: str | None = None,
) -> torch.Tensor:
    """Semantic label map as ``int64 [H, W]`` with values ``0..K-1`` or :data:`IGNORE_INDEX`.

    ``ignore_values`` are the on-disk ignore values (255 for PNG, 65535 for the uint16 TIFFs of A-847 / PC-459).
    Any other value outside ``0..K-1`` raises :class:`DatasetFormatError` naming the file.
    """
    raw = torch.from_numpy(read_label_array(path).astype(np.int64))  # [H, W]
    ignore = torch.zeros_like(raw, dtype=torch.bool)
    for value in ignore_values:
        ignore |= raw == value
    label = raw.masked_fill(ignore, IGNORE_INDEX)
    bad = (~ignore) & ((label < 0) | (label >= num_classes))
    if bool(bad.any()):
        values = torch.unique(label[bad])[:10].tolist()
        fix = f" {prepare_hint(script)}" if script else ""
        raise DatasetFormatError(
            f"Label map {path} contains values {values} outside 0..{num_classes - 1} that are not the ignore value "
            f"{list(ignore_values)}; is this the converted label map of a {num_classes}-class dataset?{fix}"
        )
    return label


def check_same_size(image: torch.Tensor, label: torch.Tensor, image_path: Path, label_path: Path) -> None:
    """Raise :class:`DatasetFormatError` if ``image [3, H, W]`` and ``label [..., H, W]`` differ in size."""
    if tuple(image.shape[-2:]) != tuple(label.shape[-2:]):
        raise DatasetFormatError(
            f"Image {image_path} is {tuple(image.shape[-2:])} (H, W) but its label {label_path} is "
            f"{tuple(label.shape[-2:])}; the pair must have the same size (re-run the prepare script)."
        )


def rgb_to_panoptic_id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG colour ``[H, W, 3]`` to segment id ``R + 256 G + 256^2 B`` (panopticapi ``rgb2id``)."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def panoptic_id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_panoptic_id`: ``[H, W]`` ids to ``uint8 [H, W, 3]`` colours."""
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // (256 * 256) % 256], axis=-1).astype(np.uint8)


def read_panoptic(path: Path) -> torch.Tensor:
    """Panoptic PNG as ``int64 [H, W]`` segment ids (0 = void)."""
    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise DatasetFormatError(f"Cannot read panoptic PNG {path}: {err}. Re-run the prepare script.") from err
    return torch.from_numpy(rgb_to_panoptic_id(rgb))


def read_json(path: Path, script: str | None = None) -> Any:
    """Parse a JSON annotation file, naming it when it is missing or malformed."""
    require_path(path, "Annotation file", script)
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise DatasetFormatError(f"Annotation file {path} is not valid JSON: {err}. Re-download it.") from err
