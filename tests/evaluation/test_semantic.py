"""SemanticSegMetric against hand-computed values and independent detectron2 / mmseg reimplementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ovs.evaluation import SemanticSegMetric

GT = torch.tensor([[0, 0, 1], [1, 2, -1]])
PRED = torch.tensor([[0, 1, 1], [1, 1, 0]])
# valid pairs (gt, pred): (0,0) (0,1) (1,1) (1,1) (2,1)
# class 0: TP 1, GT 2, pred 1 -> IoU 1/2, acc 1/2; class 1: TP 2, GT 2, pred 4 -> IoU 2/4, acc 1; class 2: IoU 0, acc 0


@pytest.mark.parametrize("convention", ["detectron2", "mmseg"])
def test_hand_computed_example(convention: str) -> None:
    metric = SemanticSegMetric(3, convention=convention, seen=torch.tensor([True, False, True]))
    metric.update(PRED, GT)
    result = metric.compute()
    assert result["IoU"].tolist() == [50.0, 50.0, 0.0] and result["Acc"].tolist() == [50.0, 100.0, 0.0]
    assert math.isclose(result["mIoU"], 100 / 3)
    assert math.isclose(result["fwIoU"], 100 * (2 / 5 * 1 / 2 + 2 / 5 * 1 / 2 + 1 / 5 * 0))
    assert math.isclose(result["pAcc"], 60.0) and math.isclose(result["mAcc"], 50.0)
    assert math.isclose(result["mIoU_seen"], 25.0) and math.isclose(result["mIoU_unseen"], 50.0)


def test_conventions_differ_on_predicted_only_classes() -> None:
    gt = torch.tensor([[0, 0], [0, -1]])
    pred = torch.tensor([[0, 2], [1, 2]])  # classes 1 and 2 are predicted but absent from the GT; 3 is absent
    detectron2 = SemanticSegMetric(4, "detectron2")
    mmseg = SemanticSegMetric(4, "mmseg")
    for metric in (detectron2, mmseg):
        metric.update(pred, gt)
    d2, mm = detectron2.compute(), mmseg.compute()
    assert math.isclose(d2["mIoU"], 100 / 3)  # only class 0 counts
    assert math.isclose(mm["mIoU"], 100 / 9)  # classes 1, 2 count with IoU 0; class 3 is NaN
    assert d2["IoU"][1:].isnan().all()
    assert mm["IoU"][1:3].tolist() == [0.0, 0.0] and mm["IoU"][3].isnan()
    for result in (d2, mm):
        assert math.isclose(result["mAcc"], 100 / 3) and math.isclose(result["pAcc"], 100 / 3)


def test_three_conventions_on_a_predicted_only_class() -> None:
    """GT / prediction pairs over K = 4: (0,0) x3, (0,1), (1,1) x2, (1,3); class 2 appears nowhere, class 3 is only
    predicted. By hand: I = (3, 2, 0, 0), GT = (4, 3, 0, 0), pred = (3, 3, 0, 1), U = (4, 4, 0, 1).
    detectron2: mean over GT classes {0, 1} = (3/4 + 2/4) / 2; v0.6: (3/4 + 2/4) / #{0, 1, 3} with class 3's IoU
    reported as NaN; mmseg: nanmean(3/4, 2/4, NaN, 0) with class 3's IoU 0."""
    gt = torch.tensor([[0, 0, 0, 0], [1, 1, 1, -1]])
    pred = torch.tensor([[0, 0, 0, 1], [1, 1, 3, 2]])
    results = {}
    for convention in ("detectron2", "detectron2_v0.6", "mmseg"):
        metric = SemanticSegMetric(4, convention, seen=torch.tensor([True, True, False, False]))
        metric.update(pred, gt)
        results[convention] = metric.compute()
    d2, v06, mm = results["detectron2"], results["detectron2_v0.6"], results["mmseg"]
    assert math.isclose(d2["mIoU"], 100 * (3 / 4 + 2 / 4) / 2)
    assert math.isclose(v06["mIoU"], 100 * (3 / 4 + 2 / 4) / 3)
    assert math.isclose(mm["mIoU"], 100 * (3 / 4 + 2 / 4 + 0) / 3)
    assert d2["IoU"][2:].isnan().all() and v06["IoU"][2:].isnan().all()
    assert mm["IoU"][2].isnan() and mm["IoU"][3] == 0.0
    assert math.isclose(v06["mIoU_unseen"], 0.0) and d2["mIoU_unseen"].isnan()  # class 3 only in v0.6 / mmseg
    for result in results.values():
        assert result["IoU"][:2].tolist() == [75.0, 50.0]
        assert math.isclose(result["mAcc"], 100 * (3 / 4 + 2 / 3) / 2) and math.isclose(result["pAcc"], 500 / 7)


def test_all_ignore_image_changes_nothing() -> None:
    metric = SemanticSegMetric(3)
    metric.update(PRED, GT)
    before = metric.confmat.clone()
    metric.update(torch.tensor([[1, 2]]), torch.tensor([[-1, -1]]))
    assert torch.equal(metric.confmat, before)


def test_empty_prediction_counts_as_misses() -> None:
    metric = SemanticSegMetric(3, "mmseg")
    metric.update(torch.full((2, 2), -1), torch.tensor([[0, 0], [1, -1]]))
    result = metric.compute()
    assert result["IoU"][:2].tolist() == [0.0, 0.0] and result["IoU"][2].isnan()
    assert result["pAcc"] == 0.0 and result["mIoU"] == 0.0


def test_nothing_valid_gives_nan() -> None:
    metric = SemanticSegMetric(2)
    metric.update(torch.tensor([[0, 1]]), torch.tensor([[-1, -1]]))
    result = metric.compute()
    assert all(bool(result[key].isnan()) for key in ("mIoU", "fwIoU", "mAcc", "pAcc"))


def test_batched_and_list_inputs_agree() -> None:
    generator = torch.Generator().manual_seed(0)
    preds = torch.randint(0, 5, (3, 4, 6), generator=generator)
    gts = torch.randint(-1, 5, (3, 4, 6), generator=generator)
    batched, listed = SemanticSegMetric(5), SemanticSegMetric(5)
    batched.update(preds, gts)
    listed.update(list(preds), list(gts))
    assert torch.equal(batched.confmat, listed.confmat)


def test_invalid_inputs() -> None:
    metric = SemanticSegMetric(3)
    with pytest.raises(ValueError, match="outside 0..2"):
        metric.update(torch.tensor([[3]]), torch.tensor([[0]]))
    with pytest.raises(ValueError, match="outside 0..2"):
        metric.update(torch.tensor([[0]]), torch.tensor([[7]]))
    with pytest.raises(ValueError, match="shape"):
        metric.update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="argmax"):
        metric.update(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="convention"):
        SemanticSegMetric(3, "voc")


def detectron2_confusion(preds: list[np.ndarray], gts: list[np.ndarray], k: int) -> np.ndarray:
    """detectron2 SemSegEvaluator.process: ``[K + 1, K + 1]`` counts indexed [pred, gt], ignore (-1) -> K."""
    conf = np.zeros((k + 1, k + 1), dtype=np.int64)
    for pred, gt in zip(preds, gts):
        gt = gt.copy()
        gt[gt == -1] = k
        conf += np.bincount((k + 1) * pred.reshape(-1) + gt.reshape(-1), minlength=(k + 1) ** 2).reshape(k + 1, k + 1)
    return conf


def detectron2_reference(preds: list[np.ndarray], gts: list[np.ndarray], k: int) -> dict[str, float]:
    """detectron2 SemSegEvaluator.evaluate on :func:`detectron2_confusion`."""
    conf = detectron2_confusion(preds, gts, k)
    acc, iou = np.full(k, np.nan), np.full(k, np.nan)
    tp = conf.diagonal()[:-1].astype(float)
    pos_gt = np.sum(conf[:-1, :-1], axis=0).astype(float)
    class_weights = pos_gt / np.sum(pos_gt)
    pos_pred = np.sum(conf[:-1, :-1], axis=1).astype(float)
    acc_valid = pos_gt > 0
    acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
    union = pos_gt + pos_pred - tp
    iou_valid = np.logical_and(acc_valid, union > 0)
    iou[iou_valid] = tp[iou_valid] / union[iou_valid]
    return {
        "mIoU": 100 * np.sum(iou[iou_valid]) / np.sum(iou_valid),
        "fwIoU": 100 * np.sum(iou[iou_valid] * class_weights[iou_valid]),
        "mAcc": 100 * np.sum(acc[acc_valid]) / np.sum(acc_valid),
        "pAcc": 100 * np.sum(tp) / np.sum(pos_gt),
    }


def detectron2_v06_reference(preds: list[np.ndarray], gts: list[np.ndarray], k: int) -> dict[str, float]:
    """detectron2 v0.6 SemSegEvaluator.evaluate: IoU set for classes with GT, mean divided by #(GT or prediction)."""
    conf = detectron2_confusion(preds, gts, k)
    acc, iou = np.full(k, np.nan), np.full(k, np.nan)
    tp = conf.diagonal()[:-1].astype(float)
    pos_gt = np.sum(conf[:-1, :-1], axis=0).astype(float)
    class_weights = pos_gt / np.sum(pos_gt)
    pos_pred = np.sum(conf[:-1, :-1], axis=1).astype(float)
    acc_valid = pos_gt > 0
    acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
    iou_valid = (pos_gt + pos_pred) > 0
    union = pos_gt + pos_pred - tp
    iou[acc_valid] = tp[acc_valid] / union[acc_valid]
    return {
        "mIoU": 100 * np.sum(iou[acc_valid]) / np.sum(iou_valid),
        "fwIoU": 100 * np.sum(iou[acc_valid] * class_weights[acc_valid]),
        "mAcc": 100 * np.sum(acc[acc_valid]) / np.sum(acc_valid),
        "pAcc": 100 * np.sum(tp) / np.sum(pos_gt),
    }


def mmseg_reference(preds: list[np.ndarray], gts: list[np.ndarray], k: int) -> dict[str, float]:
    """mmseg IoUMetric: intersect_and_union per image, total_area_to_metrics with nanmean."""
    inter, union, label_area = np.zeros(k), np.zeros(k), np.zeros(k)
    for pred, gt in zip(preds, gts):
        mask = gt != -1
        pred, gt = pred[mask], gt[mask]
        intersect = pred[pred == gt]
        a_inter = np.histogram(intersect, bins=k, range=(0, k))[0]
        a_pred = np.histogram(pred, bins=k, range=(0, k))[0]
        a_label = np.histogram(gt, bins=k, range=(0, k))[0]
        inter += a_inter
        union += a_pred + a_label - a_inter
        label_area += a_label
    with np.errstate(invalid="ignore", divide="ignore"):
        iou, acc = inter / union, inter / label_area
    return {"mIoU": 100 * np.nanmean(iou), "mAcc": 100 * np.nanmean(acc), "pAcc": 100 * inter.sum() / label_area.sum()}


@pytest.mark.parametrize("seed", range(3))
def test_matches_reference_implementations(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = 7
    # classes 5 and 6 never appear in the GT; class 6 is predicted sometimes
    gts = [rng.integers(-1, 5, size=(9, 13)) for _ in range(4)]
    preds = [np.where(rng.random((9, 13)) < 0.6, np.clip(g, 0, None), rng.integers(0, k, size=(9, 13))) for g in gts]
    for convention, reference in (("detectron2", detectron2_reference), ("detectron2_v0.6", detectron2_v06_reference),
                                  ("mmseg", mmseg_reference)):
        metric = SemanticSegMetric(k, convention)
        for pred, gt in zip(preds, gts):
            metric.update(torch.from_numpy(pred), torch.from_numpy(gt))
        result = metric.compute()
        for key, value in reference(preds, gts, k).items():
            assert math.isclose(float(result[key]), value, rel_tol=1e-12), (convention, key)
