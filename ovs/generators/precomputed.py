"""Masks produced elsewhere (SAM, a user's own generator), read from disk (maskclippp.md §8; the reference's
``OFFLINE_ANN_DIR``).

Two formats, both keyed by the image file's stem (``meta["file_name"]``) or its ``image_id``:

* **one ``.npz`` per image**: ``<dir>/<stem>.npz`` with ``masks`` (``[Q, H, W]``: bool / uint8 {0, 1} / float in
  [0, 1] or uint8 0..255 probabilities, any resolution — resized bilinearly to the image) and optional ``logits``
  (``[Q, K + 1]``, void last);
* **one COCO RLE JSON per image set**: a list (COCO results format) of ``{"image_id" | "file_name",
  "segmentation": {"size": [H, W], "counts": str}}`` with optional ``"logits": [K + 1 floats]`` per entry; entries
  of one image keep their file order.

``vocabulary`` names the columns of stored logits (a class-name file or synonym lists); without it the logits are
taken to score the test vocabulary (open-vocabulary generator). :func:`write_npz` and :func:`write_coco_rle_json`
write both formats.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ovs.data.class_names import load_class_names
from ovs.generators.base import Batch, MaskGenerator, MaskProposals, original_sizes, resize_masks

PathLike = str | os.PathLike[str]


class PrecomputedMasks(MaskGenerator):
    """Reads masks (and optional logits) written by an external generator.

    Args:
        path: a directory of ``<stem>.npz`` files or a COCO RLE ``.json`` file.
        vocabulary: class names of the stored logit columns (without void); ``None``: the test vocabulary.
        training_vocabulary: the external generator's training set (seen classes), e.g. ``coco_panoptic``.
        missing: ``"error"`` (default) or ``"empty"`` (an image without stored masks gets none).
    """

    def __init__(
        self,
        path: PathLike,
        vocabulary: str | list[list[str]] | None = None,
        training_vocabulary: str | list[list[str]] | None = None,
        missing: str = "error",
    ) -> None:
        super().__init__()
        if missing not in ("error", "empty"):
            raise ValueError(f"missing must be 'error' or 'empty', got {missing!r}.")
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(
                f"Precomputed masks not found: {self.path}. Point `path` at a directory of <image stem>.npz files or "
                "a COCO RLE .json (docs/maskclippp.md, 'Masks from disk')."
            )
        self.logits_vocabulary = _names(vocabulary)
        self.training_vocabulary = _names(training_vocabulary)
        self.open_vocabulary = self.logits_vocabulary is None
        self.missing = missing
        self._json: dict[str, list[dict[str, Any]]] | None = None
        if self.path.is_file():
            self._json = _index_json(self.path)

    def forward(self, batch: Batch) -> list[MaskProposals]:
        metas = batch.get("meta") or [{} for _ in batch["image"]]
        return [self._read(meta, size) for meta, size in zip(metas, original_sizes(batch))]

    def _keys(self, meta: dict[str, Any]) -> list[str]:
        keys = []
        if "file_name" in meta:
            keys.append(Path(str(meta["file_name"])).stem)
        if "image_id" in meta:
            keys.append(str(meta["image_id"]))
        return keys

    def _read(self, meta: dict[str, Any], size: tuple[int, int]) -> MaskProposals:
        keys = self._keys(meta)
        if self._json is not None:
            entries = next((self._json[k] for k in keys if k in self._json), None)
            if entries is None:
                return self._missing(keys, size)
            masks, logits = _decode_entries(entries, self.path)
        else:
            file = next((self.path / f"{k}.npz" for k in keys if (self.path / f"{k}.npz").is_file()), None)
            if file is None:
                return self._missing(keys, size)
            masks, logits = read_npz(file)
        return MaskProposals(resize_masks(masks, size), logits, self.logits_vocabulary)

    def _missing(self, keys: Sequence[str], size: tuple[int, int]) -> MaskProposals:
        if self.missing == "empty":
            return MaskProposals(torch.zeros(0, *size))
        raise FileNotFoundError(
            f"No precomputed masks for image {keys[0] if keys else '?'} in {self.path} (looked up {list(keys)}). "
            "Write them for every image, or set missing: empty."
        )


def _names(names: str | list[list[str]] | None) -> list[list[str]] | None:
    if names is None:
        return None
    return load_class_names(names) if isinstance(names, str) else [list(n) for n in names]


def _as_probabilities(array: np.ndarray, source: Path) -> Tensor:
    """``float32 [Q, H, W]`` in [0, 1] from bool, {0, 1} / 0..255 uint8 or float masks."""
    if array.ndim != 3:
        raise ValueError(f"{source}: masks must be [Q, H, W], got shape {array.shape}.")
    if array.dtype == np.bool_:
        return torch.from_numpy(array.astype(np.float32))
    if array.dtype == np.uint8:
        scale = 255.0 if array.max(initial=0) > 1 else 1.0
        return torch.from_numpy(array.astype(np.float32) / scale)
    masks = torch.from_numpy(np.asarray(array, dtype=np.float32))
    if masks.numel() and (float(masks.min()) < 0 or float(masks.max()) > 1):
        raise ValueError(f"{source}: float masks must be probabilities in [0, 1] (apply the sigmoid first).")
    return masks


def read_npz(path: PathLike) -> tuple[Tensor, Tensor | None]:
    """``masks`` ``float [Q, H, W]`` and optional ``logits`` ``float [Q, K + 1]`` of one ``.npz`` (no pickles)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if "masks" not in data:
                raise ValueError(f"{path} has no `masks` array (found {sorted(data.files)}).")
            masks = _as_probabilities(data["masks"], path)
            logits = torch.from_numpy(data["logits"].astype(np.float32)) if "logits" in data else None
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"{path} is not a readable .npz file ({error}); re-write it with ovs.generators.write_npz.")
    return masks, logits


def write_npz(path: PathLike, masks: Tensor, logits: Tensor | None = None) -> Path:
    """Write one image's masks (``[Q, H, W]`` bool or probabilities) and optional logits ``[Q, K + 1]``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"masks": masks.detach().cpu().numpy()}
    if logits is not None:
        arrays["logits"] = logits.detach().cpu().float().numpy()
    np.savez_compressed(path, **arrays)
    return path


def _index_json(path: Path) -> dict[str, list[dict[str, Any]]]:
    try:
        entries = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}).") from error
    if not isinstance(entries, list):
        raise ValueError(f"{path} must hold a list of COCO result entries, got {type(entries).__name__}.")
    index: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        if "segmentation" not in entry or not ({"image_id", "file_name"} & set(entry)):
            raise ValueError(f"{path}: every entry needs `segmentation` and `image_id` or `file_name`; got {entry}.")
        key = Path(str(entry["file_name"])).stem if "file_name" in entry else str(entry["image_id"])
        index.setdefault(key, []).append(entry)
    return index


def _decode_entries(entries: Sequence[dict[str, Any]], source: Path) -> tuple[Tensor, Tensor | None]:
    from pycocotools import mask as mask_utils

    rles = []
    for entry in entries:
        rle = dict(entry["segmentation"])
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
        rles.append(rle)
    masks = _as_probabilities(np.moveaxis(mask_utils.decode(rles), -1, 0).astype(bool), source)  # [Q, H, W]
    with_logits = ["logits" in entry for entry in entries]
    if any(with_logits) and not all(with_logits):
        raise ValueError(f"{source}: either every entry of an image has `logits` or none has.")
    logits = torch.tensor([entry["logits"] for entry in entries], dtype=torch.float32) if all(with_logits) else None
    return masks, logits


def write_coco_rle_json(
    path: PathLike, images: Sequence[tuple[str | int, Tensor, Tensor | None]], key: str = "file_name"
) -> Path:
    """Write ``(file stem or image id, bool masks [Q, H, W], optional logits [Q, K + 1])`` per image as one COCO RLE
    JSON list; ``key`` is ``"file_name"`` or ``"image_id"``."""
    from pycocotools import mask as mask_utils

    if key not in ("file_name", "image_id"):
        raise ValueError(f"key must be 'file_name' or 'image_id', got {key!r}.")
    entries = []
    for name, masks, logits in images:
        if masks.shape[0] == 0:
            continue
        array = np.asfortranarray(masks.bool().permute(1, 2, 0).cpu().numpy().astype(np.uint8))  # [H, W, Q]
        for q, rle in enumerate(mask_utils.encode(array)):
            entry: dict[str, Any] = {key: name, "segmentation": {"size": list(rle["size"]),
                                                                   "counts": rle["counts"].decode("ascii")}}
            if logits is not None:
                entry["logits"] = [float(v) for v in logits[q]]
            entries.append(entry)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries))
    return path
