"""PQ matching at the IoU threshold (COCO panoptic: a pair matches iff IoU > 0.5) and the void-corrected union.

Every expected count and IoU is worked out by hand in the comments (maskclippp.md §9.1, panopticapi ``pq_compute``):
a wrong threshold (``>=``, ``> 0.45``, ``> 0.3``) or a union that keeps the prediction's void pixels fails here.
"""

from __future__ import annotations

import math

import pytest
import torch

from ovs.evaluation import PanopticQuality

THING, STUFF = 0, 1


def strip(gt_thing: int, pred_on_thing: int, pred_on_void: int, void: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One-row panoptic maps: GT = ``gt_thing`` pixels of segment 1 (class 0), ``void`` pixels of id 0, then 20
    pixels of stuff segment 2 (class 1). The prediction (segment 7, class 0) covers the first ``pred_on_thing``
    pixels of segment 1 and the first ``pred_on_void`` void pixels; the stuff pixels are predicted exactly (id 8,
    IoU 1), the other pixels not at all (id 0)."""
    gt = torch.cat([torch.ones(gt_thing), torch.zeros(void), torch.full((20,), 2)]).long()
    pred = torch.where(gt == 2, 8, 0)
    pred[:pred_on_thing] = 7
    pred[gt_thing : gt_thing + pred_on_void] = 7
    return pred[None], gt[None]


def run(pred: torch.Tensor, gt: torch.Tensor) -> PanopticQuality:
    metric = PanopticQuality(2, [True, False])
    metric.update(
        pred,
        [{"id": 7, "category_id": THING}, {"id": 8, "category_id": STUFF}],
        gt,
        [{"id": 1, "category_id": THING, "iscrowd": 0}, {"id": 2, "category_id": STUFF, "iscrowd": 0}],
    )
    return metric


@pytest.mark.parametrize(
    ("gt_thing", "pred_on_thing", "matched", "iou"),
    [
        (4, 2, False, 2 / 4),  # IoU = 2 / (4 + 2 - 2) = 0.5 exactly: not a match -> FP + FN
        (100, 51, True, 51 / 100),  # IoU = 51 / (100 + 51 - 51) = 0.51 -> TP
        (20, 7, False, 7 / 20),  # IoU = 0.35 -> FP + FN
        (10, 3, False, 3 / 10),  # IoU = 0.3 exactly -> FP + FN
    ],
)
def test_thing_match_threshold_is_strictly_above_one_half(gt_thing: int, pred_on_thing: int, matched: bool,
                                                          iou: float) -> None:
    pred, gt = strip(gt_thing, pred_on_thing, 0)
    metric = run(pred, gt)
    assert metric.tp.tolist() == [int(matched), 1]
    assert metric.fp.tolist() == [int(not matched), 0] and metric.fn.tolist() == [int(not matched), 0]
    assert math.isclose(float(metric.iou_sum[THING]), iou if matched else 0.0, abs_tol=1e-12)
    result = metric.compute()
    thing_pq = 100 * iou if matched else 0.0  # TP: iou / (1 + 0 + 0); no TP: 0 / (0 + 0.5 + 0.5)
    assert math.isclose(float(result["PQ_th"]), thing_pq, abs_tol=1e-9)
    assert math.isclose(float(result["PQ_st"]), 100.0, abs_tol=1e-9)  # stuff predicted exactly
    assert math.isclose(float(result["RQ_th"]), 100.0 if matched else 0.0, abs_tol=1e-9)


def test_void_pixels_of_the_prediction_leave_the_union() -> None:
    # GT thing: 4 pixels, then 3 void pixels. Prediction: 3 thing pixels + all 3 void pixels (area 6).
    # panopticapi: union = 6 + 4 - 3 - 3 (void overlap) = 4, IoU = 3 / 4 = 0.75 -> TP.
    # Without the void correction the union would be 7 and the IoU 3 / 7 = 0.43 (no match).
    pred, gt = strip(4, 3, 3, void=3)
    metric = run(pred, gt)
    assert metric.tp.tolist() == [1, 1] and metric.fp.tolist() == [0, 0] and metric.fn.tolist() == [0, 0]
    assert math.isclose(float(metric.iou_sum[THING]), 0.75, abs_tol=1e-12)
    assert math.isclose(float(metric.iou_sum[STUFF]), 1.0, abs_tol=1e-12)
    assert math.isclose(float(metric.compute()["PQ"]), 100 * (0.75 + 1.0) / 2, abs_tol=1e-9)


def test_void_correction_at_the_threshold() -> None:
    # GT thing 6 pixels, 2 void; prediction 3 thing pixels + 2 void pixels (area 5):
    # union = 5 + 6 - 3 - 2 = 6, IoU = 3 / 6 = 0.5 exactly -> FP + FN. Only 2 / 5 of the prediction lies on void,
    # so it stays a false positive (more than half on void would excuse it).
    pred, gt = strip(6, 3, 2, void=2)
    metric = run(pred, gt)
    assert metric.tp.tolist() == [0, 1] and metric.fp.tolist() == [1, 0] and metric.fn.tolist() == [1, 0]
    assert float(metric.iou_sum[THING]) == 0.0
