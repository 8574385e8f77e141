"""RegionAccuracy (Acc@k) and PointMIoU (OpenImages-V7 p-mIoU) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from ovs.evaluation import PointMIoU, RegionAccuracy


def test_region_accuracy_by_hand() -> None:
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.0, 0.0],  # true 0: rank 0
            [0.5, 0.4, 0.3, 0.2],  # true 2: rank 2
            [0.1, 0.2, 0.3, 0.4],  # true 0: rank 3
            [0.2, 0.2, 0.1, 0.0],  # true 1: tie with class 0 -> rank 0
        ]
    )
    metric = RegionAccuracy(4, ks=(1, 3, 10))
    metric.update(scores[:2], torch.tensor([0, 2]))
    metric.update(scores[2:], torch.tensor([0, 1]))
    result = metric.compute()
    assert result["Acc@1"] == 50.0 and result["Acc@3"] == 75.0 and result["Acc@10"] == 100.0
    # per class Acc@1: class 0 -> 1/2, class 1 -> 1/1, class 2 -> 0/1
    assert math.isclose(result["mAcc@1"], 100 * (0.5 + 1 + 0) / 3)
    with pytest.raises(ValueError, match="Expected scores"):
        metric.update(torch.zeros(2, 3), torch.tensor([0, 1]))


def test_point_miou_by_hand() -> None:
    # image 1: classes 3 and 5; class 3 map rises left to right, class 5 map is high only at the top-left pixel
    scores = torch.tensor(
        [
            [[0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0]],  # min-max -> 0, 1/3, 2/3, 1: mask = columns 2, 3
            [[9.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]],  # mask = (0, 0) only
        ]
    )
    points = torch.tensor([[0, 3], [1, 2], [0, 0], [1, 3], [0, 0], [1, 1]])
    point_classes = torch.tensor([3, 3, 3, 3, 5, 5])
    positive = torch.tensor([True, True, True, False, True, True])
    metric = PointMIoU(num_classes=8)
    metric.update(scores, torch.tensor([3, 5]), points, point_classes, positive)
    # class 3: positives (0,3) in, (1,2) in, (0,0) out -> TP 2, FN 1; negative (1,3) in -> FP 1 -> IoU 2/4
    # class 5: positive (0,0) in -> TP; positive (1,1) out -> FN -> IoU 1/2
    assert metric.tp[[3, 5]].tolist() == [2, 1] and metric.fp[[3, 5]].tolist() == [1, 0]
    assert metric.fn[[3, 5]].tolist() == [1, 1]
    # image 2: class 3 again, everything right
    metric.update(torch.tensor([[[0.0, 5.0]]]), torch.tensor([3]), torch.tensor([[0, 1], [0, 0]]),
                  torch.tensor([3, 3]), torch.tensor([True, False]))  # fmt: skip
    result = metric.compute()
    assert math.isclose(result["IoU"][3], 100 * 3 / 5) and math.isclose(result["IoU"][5], 50.0)
    assert math.isclose(result["p-mIoU"], (60.0 + 50.0) / 2) and result["IoU"][0].isnan()


def test_point_miou_rejects_points_of_absent_classes() -> None:
    metric = PointMIoU(num_classes=4)
    with pytest.raises(ValueError, match="one of `classes`"):
        metric.update(torch.zeros(1, 2, 2), torch.tensor([1]), torch.tensor([[0, 0]]), torch.tensor([2]),
                      torch.tensor([True]))  # fmt: skip
    with pytest.raises(ValueError, match="inside the 2x2"):
        metric.update(torch.zeros(1, 2, 2), torch.tensor([1]), torch.tensor([[2, 0]]), torch.tensor([1]),
                      torch.tensor([True]))  # fmt: skip
