"""InstanceAP against pycocotools COCOeval run directly on the same masks."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ovs.evaluation import InstanceAP
from ovs.evaluation.instance import AP_NAMES, AR_NAMES


def random_image(rng: np.random.Generator, k: int) -> dict[str, np.ndarray]:
    height, width = 24, 32
    n_gt = int(rng.integers(1, 5))
    gt_masks = np.zeros((n_gt, height, width), dtype=bool)
    for mask in gt_masks:
        y, x = rng.integers(0, height - 6), rng.integers(0, width - 6)
        mask[y : y + int(rng.integers(4, 12)), x : x + int(rng.integers(4, 14))] = True
    gt_labels = rng.integers(0, k, size=n_gt)
    crowd = rng.random(n_gt) < 0.2
    pred_masks = [np.roll(m, int(rng.integers(-2, 3)), axis=1) for m in gt_masks]
    pred_labels = list(np.where(rng.random(n_gt) < 0.8, gt_labels, rng.integers(0, k, size=n_gt)))
    for _ in range(int(rng.integers(0, 3))):  # spurious detections
        mask = np.zeros((height, width), dtype=bool)
        mask[rng.integers(0, 12) :, rng.integers(0, 16) :] = True
        pred_masks.append(mask)
        pred_labels.append(int(rng.integers(k)))
    return {
        "gt_masks": gt_masks, "gt_labels": gt_labels, "crowd": crowd, "pred_masks": np.stack(pred_masks),
        "pred_labels": np.array(pred_labels), "scores": rng.random(len(pred_masks)),
    }  # fmt: skip


def cocoeval_reference(images: list[dict[str, np.ndarray]], k: int, cat_ids: list[int] | None = None) -> np.ndarray:
    """All 12 COCOeval ``stats``; ``cat_ids`` (1-based) restricts the evaluation (per-category AP = ``stats[0]``)."""
    def rle(mask: np.ndarray) -> dict:
        return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))

    annotations, results = [], []
    for image_id, image in enumerate(images, start=1):
        for mask, label, crowd in zip(image["gt_masks"], image["gt_labels"], image["crowd"]):
            segmentation = rle(mask)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                "iscrowd": int(crowd), "segmentation": segmentation, "area": float(mask.sum()),
                "bbox": list(mask_utils.toBbox(segmentation)),
            })  # fmt: skip
        for mask, label, score in zip(image["pred_masks"], image["pred_labels"], image["scores"]):
            results.append({"image_id": image_id, "category_id": int(label) + 1, "segmentation": rle(mask),
                            "score": float(score)})  # fmt: skip
    gt = COCO()
    gt.dataset = {
        "images": [{"id": i, "height": 24, "width": 32} for i in range(1, len(images) + 1)],
        "annotations": annotations,
        "categories": [{"id": c + 1} for c in range(k)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), iouType="segm")
        if cat_ids is not None:
            evaluator.params.catIds = cat_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def update(metric: InstanceAP, image: dict[str, np.ndarray]) -> None:
    metric.update(
        torch.from_numpy(image["pred_masks"]),
        torch.from_numpy(image["scores"]),
        torch.from_numpy(image["pred_labels"]),
        torch.from_numpy(image["gt_masks"]),
        torch.from_numpy(image["gt_labels"]),
        torch.from_numpy(image["crowd"]),
    )


@pytest.mark.parametrize("seed", range(2))
def test_matches_cocoeval(seed: int) -> None:
    rng = np.random.default_rng(seed)
    images = [random_image(rng, 3) for _ in range(5)]
    metric = InstanceAP(3)
    for image in images:
        update(metric, image)
    result = metric.compute()
    reference = cocoeval_reference(images, 3)
    assert 0 < reference[0] < 1 and 0 < reference[8] < 1
    for name, value in zip(AP_NAMES + AR_NAMES, reference):  # AR: COCOeval stats[6:12]
        if value < 0:
            assert result[name].isnan()
        else:
            assert math.isclose(float(result[name]), 100 * value, rel_tol=1e-12), name
    # per-category AP from the single run == a separate COCOeval restricted to that category
    for c in range(3):
        alone = cocoeval_reference(images, 3, cat_ids=[c + 1])[0]
        if alone < 0:
            assert result["AP_per_class"][c].isnan()
        else:
            assert math.isclose(float(result["AP_per_class"][c]), 100 * alone, rel_tol=1e-9, abs_tol=1e-12), c


def test_perfect_and_empty_predictions() -> None:
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, :4, :4] = True
    masks[1, 4:, 2:] = True
    labels = torch.tensor([0, 1])
    perfect = InstanceAP(2)
    perfect.update(masks, torch.tensor([0.9, 0.8]), labels, masks, labels)
    assert math.isclose(perfect.compute()["AP"], 100.0)
    empty = InstanceAP(2)
    no_masks, no_labels = torch.zeros(0, 8, 8, dtype=torch.bool), torch.zeros(0, dtype=torch.long)
    empty.update(no_masks, torch.zeros(0), no_labels, masks, labels)
    assert empty.compute()["AP"] == 0.0 and empty.compute()["AR100"] == 0.0
    assert empty.compute()["AP_per_class"].tolist() == [0.0, 0.0]
    no_ground_truth = InstanceAP(2)
    no_ground_truth.update(masks, torch.tensor([0.9, 0.8]), labels, masks[:0], labels[:0])
    assert no_ground_truth.compute()["AP"].isnan()
    perfect.reset()
    perfect.update(masks, torch.tensor([0.9, 0.8]), torch.tensor([1, 0]), masks, labels)  # swapped classes
    assert perfect.compute()["AP"] == 0.0
