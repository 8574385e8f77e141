"""Every metric synced across two gloo processes equals the single-process result on the same data."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ovs.evaluation import InstanceAP, PanopticQuality, PointMIoU, RegionAccuracy, SemanticSegMetric

from .test_instance import random_image
from .test_panoptic import random_panoptic_pair

K = 4
N_IMAGES = 5  # uneven split: rank 0 gets 3 images, rank 1 gets 2


def make_data() -> dict[str, list[Any]]:
    rng = np.random.default_rng(0)
    semantic = [(torch.from_numpy(rng.integers(0, K, (6, 7))), torch.from_numpy(rng.integers(-1, K, (6, 7))))
                for _ in range(N_IMAGES)]  # fmt: skip
    panoptic = [random_panoptic_pair(rng, K) for _ in range(N_IMAGES)]
    instance = [random_image(rng, K) for _ in range(N_IMAGES)]
    regions = [(torch.from_numpy(rng.random((3, K))), torch.from_numpy(rng.integers(0, K, 3))) for _ in range(N_IMAGES)]
    points = []
    for _ in range(N_IMAGES):
        classes = torch.tensor([1, 3])
        yx = torch.from_numpy(rng.integers(0, 5, (6, 2)))
        points.append((torch.from_numpy(rng.random((2, 5, 5))), classes, yx, classes[torch.arange(6) % 2],
                       torch.from_numpy(rng.random(6) < 0.6)))  # fmt: skip
    return {"semantic": semantic, "panoptic": panoptic, "instance": instance, "regions": regions, "points": points}


def compute_metrics(indices: list[int]) -> dict[str, dict[str, torch.Tensor]]:
    data = make_data()
    metrics: dict[str, Any] = {
        "detectron2": SemanticSegMetric(K, "detectron2"),
        "mmseg": SemanticSegMetric(K, "mmseg"),
        "pq": PanopticQuality(K, [True, True, False, False]),
        "ap": InstanceAP(K),
        "acc": RegionAccuracy(K, (1, 2)),
        "points": PointMIoU(K),
    }
    for i in indices:
        metrics["detectron2"].update(*data["semantic"][i])
        metrics["mmseg"].update(*data["semantic"][i])
        pred, pred_segments, gt, gt_segments = data["panoptic"][i]
        metrics["pq"].update(torch.from_numpy(pred), pred_segments, torch.from_numpy(gt), gt_segments)
        image = data["instance"][i]
        metrics["ap"].update(
            torch.from_numpy(image["pred_masks"]), torch.from_numpy(image["scores"]),
            torch.from_numpy(image["pred_labels"]), torch.from_numpy(image["gt_masks"]),
            torch.from_numpy(image["gt_labels"]), torch.from_numpy(image["crowd"]),
        )  # fmt: skip
        metrics["acc"].update(*data["regions"][i])
        metrics["points"].update(*data["points"][i])
    return {name: metric.compute() for name, metric in metrics.items()}


def worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result = compute_metrics([0, 1, 2] if rank == 0 else [3, 4])
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def assert_same(left: torch.Tensor, right: torch.Tensor) -> None:
    left, right = torch.as_tensor(left).double(), torch.as_tensor(right).double()
    assert left.shape == right.shape
    assert torch.allclose(left, right, rtol=1e-12, atol=1e-12, equal_nan=True), (left, right)


def test_two_process_gloo_sync_equals_single_process(tmp_path: Path) -> None:
    mp.spawn(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    single = compute_metrics(list(range(N_IMAGES)))
    assert 0 < float(single["ap"]["AP"]) < 100 and not math.isnan(float(single["pq"]["PQ"]))
    for rank in range(2):
        synced = torch.load(tmp_path / f"rank{rank}.pt")
        for name, values in single.items():
            assert synced[name].keys() == values.keys()
            for key in values:
                assert_same(synced[name][key], values[key])
