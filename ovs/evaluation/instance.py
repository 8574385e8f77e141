"""Instance segmentation AP through pycocotools ``COCOeval`` (segm), as detectron2's COCO / ADE20K instance
evaluators (maskclippp.md §9.1).

Masks are RLE-encoded at ``update`` (``pycocotools.mask.encode``) and kept as flat tensors so that the states can be
gathered across processes with ``dist_reduce_fx="cat"``: per image ``images`` holds ``(rank, index, H, W)``, every
prediction / GT instance a key row ``(rank, index, label, [iscrowd,] RLE length)`` plus its RLE bytes in one
concatenated ``uint8`` stream. ``compute`` rebuilds an in-memory COCO ground truth and result set and runs COCOeval.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

AP_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
"""The first six COCOeval ``stats`` (segm), in this order."""
AR_NAMES = ("AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
"""COCOeval ``stats[6:12]``: AR at 1 / 10 / ``max_detections`` detections per image, and AR small / medium / large
at ``max_detections`` (``AR100`` names the default ``max_detections = 100``)."""


def _encode(masks: torch.Tensor) -> list[bytes]:
    """RLE ``counts`` bytes of each ``bool [N, H, W]`` mask."""
    from pycocotools import mask as mask_utils

    if masks.shape[0] == 0:
        return []
    array = np.asfortranarray(masks.permute(1, 2, 0).cpu().numpy().astype(np.uint8))  # [H, W, N]
    return [rle["counts"] for rle in mask_utils.encode(array)]


def _bytes_tensor(chunks: Sequence[bytes]) -> torch.Tensor:
    """Concatenated RLE bytes as ``uint8 [total length]``."""
    data = b"".join(chunks)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)


def _key_rows(rank: int, index: int, columns: Sequence[torch.Tensor], chunks: Sequence[bytes]) -> torch.Tensor:
    """``int64 [N, 3 + len(columns)]`` rows ``(rank, index, *columns, RLE length)``."""
    n = len(chunks)
    lengths = torch.tensor([len(chunk) for chunk in chunks], dtype=torch.int64)
    parts = [torch.full((n,), rank), torch.full((n,), index), *[c.cpu().long().reshape(n) for c in columns], lengths]
    return torch.stack(parts, dim=1)


class InstanceAP(Metric):
    """COCO mask AP (AP, AP50, AP75, APs, APm, APl), AR (AR1, AR10, AR100, ARs, ARm, ARl) and per-category AP
    ``AP_per_class [K]``, in percent, over ``class_ids`` (default: all classes), from one COCOeval run.

    Categories without ground truth are excluded from the mean by COCOeval itself, as in detectron2. Per-category AP
    is detectron2's ``_derive_coco_results``: the mean of ``eval["precision"][:, :, k, area all, last maxDets]`` over
    its defined entries (NaN for a category without ground truth or outside ``class_ids``). With no prediction at all
    every AP and AR is 0.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, num_classes: int, class_ids: Sequence[int] | None = None, max_detections: int = 100) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.class_ids = list(range(num_classes)) if class_ids is None else [int(c) for c in class_ids]
        self.max_detections = max_detections
        self._count = 0
        for name in ("images", "pred_keys", "pred_scores", "pred_rle", "gt_keys", "gt_rle"):
            self.add_state(name, [], dist_reduce_fx="cat")

    def update(
        self,
        pred_masks: torch.Tensor,
        pred_scores: torch.Tensor,
        pred_labels: torch.Tensor,
        gt_masks: torch.Tensor,
        gt_labels: torch.Tensor,
        gt_iscrowd: torch.Tensor | None = None,
    ) -> None:
        """Add one image: predictions ``bool [N, H, W]``, ``float [N]``, ``int64 [N]``; ground truth
        ``bool [M, H, W]``, ``int64 [M]`` and optional ``bool [M]`` crowd flags."""
        if pred_masks.shape[-2:] != gt_masks.shape[-2:]:
            raise ValueError(f"Predicted masks {tuple(pred_masks.shape)} and GT {tuple(gt_masks.shape)} differ.")
        if not (len(pred_masks) == len(pred_scores) == len(pred_labels)) or len(gt_masks) != len(gt_labels):
            raise ValueError("Masks, scores and labels must have the same length.")
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        height, width = gt_masks.shape[-2:]
        crowd = torch.zeros(len(gt_labels), dtype=torch.bool) if gt_iscrowd is None else gt_iscrowd.bool().cpu()
        pred_rle, gt_rle = _encode(pred_masks.bool()), _encode(gt_masks.bool())
        image = torch.tensor([[rank, self._count, height, width]], dtype=torch.int64)
        pred_keys = _key_rows(rank, self._count, [pred_labels], pred_rle)  # [N, 4]
        gt_keys = _key_rows(rank, self._count, [gt_labels, crowd], gt_rle)  # [M, 5]
        device = self.device
        self.images.append(image.to(device))
        self.pred_keys.append(pred_keys.to(device))
        self.pred_scores.append(pred_scores.detach().double().cpu().to(device).reshape(-1))
        self.pred_rle.append(_bytes_tensor(pred_rle).to(device))
        self.gt_keys.append(gt_keys.to(device))
        self.gt_rle.append(_bytes_tensor(gt_rle).to(device))
        self._count += 1

    def reset(self) -> None:
        super().reset()
        self._count = 0

    def _gathered(self, name: str, columns: int | None) -> torch.Tensor:
        value = getattr(self, name)
        tensor = dim_zero_cat(value) if isinstance(value, list) and value else value
        if isinstance(tensor, list):  # nothing was added on any process
            tensor = torch.zeros(0)
        tensor = tensor.cpu()
        return tensor.reshape(-1, columns) if columns is not None else tensor.reshape(-1)

    def compute(self) -> dict[str, torch.Tensor]:
        from pycocotools import mask as mask_utils
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        images = self._gathered("images", 4).long()
        pred_keys, pred_scores = self._gathered("pred_keys", 4).long(), self._gathered("pred_scores", None)
        gt_keys = self._gathered("gt_keys", 5).long()
        pred_bytes = self._gathered("pred_rle", None).to(torch.uint8).numpy().tobytes()
        gt_bytes = self._gathered("gt_rle", None).to(torch.uint8).numpy().tobytes()
        image_id = {(int(r), int(i)): n + 1 for n, (r, i) in enumerate(images[:, :2].tolist())}
        size = {n + 1: (int(h), int(w)) for n, (h, w) in enumerate(images[:, 2:].tolist())}

        def rle(key: tuple[int, int], chunk: bytes) -> dict[str, Any]:
            return {"size": list(size[image_id[key]]), "counts": chunk}

        annotations, offset = [], 0
        for rank, index, label, iscrowd, length in gt_keys.tolist():
            segmentation = rle((rank, index), gt_bytes[offset : offset + length])
            offset += length
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id[(rank, index)],
                    "category_id": label + 1,  # COCOeval treats id 0 as "unmatched"; shift every id by one
                    "iscrowd": iscrowd,
                    "segmentation": segmentation,
                    "area": float(mask_utils.area(segmentation)),
                    "bbox": mask_utils.toBbox(segmentation).tolist(),
                }
            )
        results, offset = [], 0
        for (rank, index, label, length), score in zip(pred_keys.tolist(), pred_scores.tolist()):
            results.append(
                {
                    "image_id": image_id[(rank, index)],
                    "category_id": label + 1,
                    "segmentation": rle((rank, index), pred_bytes[offset : offset + length]),
                    "score": score,
                }
            )
            offset += length
        names = (*AP_NAMES, *AR_NAMES)
        if not annotations:  # AP is undefined without ground truth
            result = {name: torch.tensor(float("nan"), dtype=torch.float64) for name in names}
            result["AP_per_class"] = torch.full((self.num_classes,), float("nan"), dtype=torch.float64)
            return result
        has_gt = torch.zeros(self.num_classes, dtype=torch.bool)
        has_gt[gt_keys[:, 2]] = True
        if not results:
            result = {name: torch.tensor(0.0, dtype=torch.float64) for name in names}
            result["AP_per_class"] = torch.where(has_gt, 0.0, torch.nan).double()
            return result
        ground_truth = COCO()
        ground_truth.dataset = {
            "images": [{"id": n, "height": h, "width": w} for n, (h, w) in size.items()],
            "annotations": annotations,
            "categories": [{"id": c + 1, "name": str(c)} for c in self.class_ids],
        }
        with contextlib.redirect_stdout(io.StringIO()):
            ground_truth.createIndex()
            detections = ground_truth.loadRes(results)
            evaluator = COCOeval(ground_truth, detections, iouType="segm")
            evaluator.params.maxDets = [1, 10, self.max_detections]
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        stats = torch.tensor(evaluator.stats[: len(names)], dtype=torch.float64)
        stats = torch.where(stats >= 0, 100 * stats, torch.nan)  # COCOeval writes -1 for "no GT in this range"
        result = dict(zip(names, stats))
        # precision [T IoUs, R recalls, K categories (sorted catIds), A areas, M maxDets]
        precision = torch.from_numpy(evaluator.eval["precision"][:, :, :, 0, -1]).double()  # [T, R, K']
        defined = precision > -1
        per_category = (precision * defined).sum(dim=(0, 1)) / defined.sum(dim=(0, 1))  # NaN where nothing defined
        per_class = torch.full((self.num_classes,), float("nan"), dtype=torch.float64)
        per_class[torch.tensor(evaluator.params.catIds) - 1] = 100 * per_category
        result["AP_per_class"] = per_class
        return result
