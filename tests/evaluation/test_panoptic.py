"""PanopticQuality against hand-computed values and a brute-force port of panopticapi's pq_compute_single_core."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
import pytest
import torch

from ovs.evaluation import PanopticQuality

OFFSET = 256 * 256 * 256


def panopticapi_reference(
    pairs: list[tuple[np.ndarray, list[dict[str, Any]], np.ndarray, list[dict[str, Any]]]],
    is_thing: list[bool],
) -> dict[str, float]:
    """Dictionary-based PQ exactly as panopticapi (VOID = 0, crowd by category, IoU > 0.5), then pq_average."""
    stat: dict[int, dict[str, float]] = defaultdict(lambda: {"tp": 0, "fp": 0, "fn": 0, "iou": 0.0})
    for pred_pan, pred_segments, gt_pan, gt_segments in pairs:
        gt_segms = {s["id"]: dict(s) for s in gt_segments}
        pred_segms = {s["id"]: dict(s) for s in pred_segments}
        for label, count in zip(*np.unique(gt_pan, return_counts=True)):
            if label in gt_segms:
                gt_segms[label]["area"] = count
        for label, count in zip(*np.unique(pred_pan, return_counts=True)):
            if label in pred_segms:
                pred_segms[label]["area"] = count
        gt_pred = gt_pan.astype(np.uint64) * OFFSET + pred_pan.astype(np.uint64)
        keys, counts = np.unique(gt_pred, return_counts=True)
        gt_pred_map = {(int(k // OFFSET), int(k % OFFSET)): int(v) for k, v in zip(keys, counts)}
        gt_matched, pred_matched = set(), set()
        for (gt_label, pred_label), intersection in gt_pred_map.items():
            if gt_label not in gt_segms or pred_label not in pred_segms:
                continue
            if gt_segms[gt_label]["iscrowd"] == 1:
                continue
            if gt_segms[gt_label]["category_id"] != pred_segms[pred_label]["category_id"]:
                continue
            union = (pred_segms[pred_label]["area"] + gt_segms[gt_label]["area"] - intersection
                     - gt_pred_map.get((0, pred_label), 0))  # fmt: skip
            iou = intersection / union
            if iou > 0.5:
                stat[gt_segms[gt_label]["category_id"]]["tp"] += 1
                stat[gt_segms[gt_label]["category_id"]]["iou"] += iou
                gt_matched.add(gt_label)
                pred_matched.add(pred_label)
        crowd_labels = {}
        for gt_label, info in gt_segms.items():
            if gt_label in gt_matched:
                continue
            if info["iscrowd"] == 1:
                crowd_labels[info["category_id"]] = gt_label
                continue
            stat[info["category_id"]]["fn"] += 1
        for pred_label, info in pred_segms.items():
            if pred_label in pred_matched:
                continue
            intersection = gt_pred_map.get((0, pred_label), 0)
            if info["category_id"] in crowd_labels:
                intersection += gt_pred_map.get((crowd_labels[info["category_id"]], pred_label), 0)
            if intersection / info["area"] > 0.5:
                continue
            stat[info["category_id"]]["fp"] += 1
    result = {}
    for name, selected in (("", lambda c: True), ("_th", lambda c: is_thing[c]), ("_st", lambda c: not is_thing[c])):
        pq = sq = rq = 0.0
        n = 0
        for category in range(len(is_thing)):
            if not selected(category):
                continue
            s = stat[category]
            if s["tp"] + s["fp"] + s["fn"] == 0:
                continue
            n += 1
            pq += s["iou"] / (s["tp"] + 0.5 * s["fp"] + 0.5 * s["fn"])
            sq += s["iou"] / s["tp"] if s["tp"] != 0 else 0
            rq += s["tp"] / (s["tp"] + 0.5 * s["fp"] + 0.5 * s["fn"])
        result.update({f"PQ{name}": 100 * pq / n, f"SQ{name}": 100 * sq / n, f"RQ{name}": 100 * rq / n})
    return result


def test_hand_computed_example() -> None:
    # GT: a thing (id 1, class 0) on the left, stuff (id 2, class 1) on the right, a void column.
    gt = torch.tensor([[1, 1, 2, 2, 0], [1, 1, 2, 2, 0]])
    # Prediction: thing matches exactly (IoU 1); stuff covers 3 of 4 GT pixels plus 1 void pixel:
    # IoU = 3 / (4 + 4 - 3 - 1) = 0.75; a second class-0 segment lies on void only -> not an FP.
    pred = torch.tensor([[5, 5, 6, 6, 7], [5, 5, 6, 8, 6]])
    metric = PanopticQuality(2, [True, False])
    metric.update(
        pred,
        [{"id": 5, "category_id": 0}, {"id": 6, "category_id": 1}, {"id": 7, "category_id": 0},
         {"id": 8, "category_id": 0}],
        gt,
        [{"id": 1, "category_id": 0, "iscrowd": 0}, {"id": 2, "category_id": 1, "iscrowd": 0}],
    )  # fmt: skip
    # segment 8 (class 0) lies on GT stuff, overlap 0 with void: a false positive of class 0
    assert metric.tp.tolist() == [1, 1] and metric.fp.tolist() == [1, 0] and metric.fn.tolist() == [0, 0]
    result = metric.compute()
    assert math.isclose(result["PQ_th"], 100 * 1.0 / 1.5) and math.isclose(result["PQ_st"], 75.0)
    assert math.isclose(result["SQ_th"], 100.0) and math.isclose(result["RQ_th"], 100 / 1.5)
    assert math.isclose(result["PQ"], (100 / 1.5 + 75) / 2)


def test_crowd_region_absorbs_predictions_of_its_class() -> None:
    gt = torch.tensor([[3, 3, 3, 3]])
    gt_segments = [{"id": 3, "category_id": 0, "iscrowd": 1}]
    metric = PanopticQuality(2, [True, True])
    metric.update(torch.tensor([[4, 4, 4, 9]]), [{"id": 4, "category_id": 0}, {"id": 9, "category_id": 1}],
                  gt, gt_segments)  # fmt: skip
    # class 0 prediction lies on a crowd region of class 0 -> ignored; class 1 prediction -> FP; crowd -> no FN
    assert metric.tp.tolist() == [0, 0] and metric.fp.tolist() == [0, 1] and metric.fn.tolist() == [0, 0]
    result = metric.compute()
    assert result["PQ"] == 0.0 and result["PQ_per_class"][0] == 0.0 and int(result["n"]) == 1


def test_per_class_values_follow_panopticapi_for_a_category_without_tp_fp_fn() -> None:
    """Class 0: GT segment 1 matched by prediction 5 with IoU 3/4 (TP), GT segment 2 unmatched (FN) -> PQ = 0.75 /
    1.5 = 50, SQ = 75, RQ = 1 / 1.5. Class 1: no GT, no prediction -> per-class PQ / SQ / RQ 0 (panopticapi
    ``pq_average``) and left out of the means (n = 2). Class 2: prediction 7 on segment 2 (FP) -> 0 / 0 / 0, but it
    counts in the means."""
    gt = torch.tensor([[1, 1, 1, 1, 2, 2]])
    pred = torch.tensor([[5, 5, 5, 0, 7, 7]])
    metric = PanopticQuality(3, [True, True, False])
    metric.update(pred, [{"id": 5, "category_id": 0}, {"id": 7, "category_id": 2}],
                  gt, [{"id": 1, "category_id": 0, "iscrowd": 0}, {"id": 2, "category_id": 0, "iscrowd": 0}])
    result = metric.compute()
    torch.testing.assert_close(result["PQ_per_class"], torch.tensor([50.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(result["SQ_per_class"], torch.tensor([75.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(result["RQ_per_class"], torch.tensor([100 / 1.5, 0.0, 0.0], dtype=torch.float64))
    assert int(result["n"]) == 2 and int(result["n_th"]) == 1 and int(result["n_st"]) == 1
    assert math.isclose(result["PQ"], 25.0) and math.isclose(result["SQ"], 37.5)
    assert math.isclose(result["RQ"], 100 / 3)
    assert math.isclose(result["PQ_th"], 50.0) and result["PQ_st"] == 0.0


def random_panoptic_pair(rng: np.random.Generator, k: int) -> tuple[np.ndarray, list, np.ndarray, list]:
    height, width = 12, 16
    cells = rng.integers(0, 7, size=(3, 4))  # segment index per 4x4 cell, 0 = void
    gt = np.kron(cells, np.ones((4, 4), dtype=np.int64)) * 10
    gt_segments = [
        {"id": int(i), "category_id": int(rng.integers(k)), "iscrowd": int(rng.random() < 0.15)}
        for i in np.unique(gt) if i
    ]  # fmt: skip
    pred = gt.copy()
    noise = rng.random((height, width))
    pred[noise < 0.2] = rng.choice(np.unique(gt), size=int((noise < 0.2).sum())) + 1  # ids (10 j) + 1 also new
    pred[(noise >= 0.2) & (noise < 0.27)] = 0
    pred[pred == 1] = 0
    categories = {s["id"]: s["category_id"] for s in gt_segments}
    pred_segments = []
    for i in np.unique(pred):
        if i == 0:
            continue
        base = int(i) - int(i) % 10
        category = categories.get(base, int(rng.integers(k)))
        if rng.random() < 0.2:
            category = int(rng.integers(k))
        pred_segments.append({"id": int(i), "category_id": category})
    return pred, pred_segments, gt, gt_segments


@pytest.mark.parametrize("seed", range(4))
def test_matches_panopticapi_bruteforce(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k, is_thing = 4, [True, True, False, False]
    pairs = [random_panoptic_pair(rng, k) for _ in range(6)]
    metric = PanopticQuality(k, is_thing)
    for pred, pred_segments, gt, gt_segments in pairs:
        metric.update(torch.from_numpy(pred), pred_segments, torch.from_numpy(gt), gt_segments)
    result = metric.compute()
    reference = panopticapi_reference(pairs, is_thing)
    for key, value in reference.items():
        assert math.isclose(float(result[key]), value, rel_tol=1e-9, abs_tol=1e-9), key


def test_inconsistent_predictions_are_rejected() -> None:
    metric = PanopticQuality(2, [True, False])
    gt, gt_segments = torch.ones(2, 2, dtype=torch.long), [{"id": 1, "category_id": 0, "iscrowd": 0}]
    with pytest.raises(ValueError, match=r"\[7\] are not in pred_segments"):
        metric.update(torch.full((2, 2), 7), [], gt, gt_segments)
    with pytest.raises(ValueError, match="have no pixel"):
        metric.update(torch.zeros(2, 2, dtype=torch.long), [{"id": 3, "category_id": 0}], gt, gt_segments)
    with pytest.raises(ValueError, match="0..1"):
        metric.update(torch.full((2, 2), 3), [{"id": 3, "category_id": 2}], gt, gt_segments)
