"""Ground-truth oracle and masks read from disk (npz per image, COCO RLE JSON per image set)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ovs.data import build_eval_datamodule
from ovs.data.constants import IGNORE_INDEX
from ovs.data.fake import write_fake_ade20k
from ovs.generators import GroundTruthMasks, MaskProposals, PrecomputedMasks, write_coco_rle_json, write_npz


def test_oracle_returns_the_dataset_masks(tmp_path: Path) -> None:
    fake = write_fake_ade20k(tmp_path, num_images=1, height=24, width=40)
    datamodule = build_eval_datamodule("ade150", root=tmp_path, task="panoptic")
    datamodule.setup("test")
    sample = datamodule.test_dataset[0]  # type: ignore[index]
    (proposals,) = GroundTruthMasks()({k: [v] for k, v in sample.items()})
    pan = next(iter(fake.panoptic["val"].values()))
    expected = np.stack([pan.ids == s["id"] for s in pan.segments]).astype(np.float32)  # no crowd in fake ADE
    assert torch.equal(proposals.masks, torch.from_numpy(expected))
    assert proposals.logits is None


def test_oracle_from_semantic_labels_one_mask_per_class() -> None:
    sem_seg = torch.tensor([[3, 3, IGNORE_INDEX], [0, 3, 0]])
    (proposals,) = GroundTruthMasks(num_classes=5)({"image": [torch.zeros(3, 2, 3)], "sem_seg": [sem_seg]})
    expected = torch.tensor([[[0, 0, 0], [1, 0, 1]], [[1, 1, 0], [0, 1, 0]]], dtype=torch.float32)  # classes 0, 3
    assert torch.equal(proposals.masks, expected)


def batch_for(stems: list[str], sizes: list[tuple[int, int]]) -> dict[str, list]:
    return {
        "image": [torch.zeros(3, h, w, dtype=torch.uint8) for h, w in sizes],
        "meta": [{"file_name": f"/data/images/{s}.jpg", "height": h, "width": w, "image_id": s}
                 for s, (h, w) in zip(stems, sizes)],
    }


def test_npz_round_trip_binary_soft_and_logits(tmp_path: Path) -> None:
    binary = torch.rand(3, 6, 9) > 0.5
    soft = torch.rand(2, 6, 9)
    logits = torch.randn(2, 5)
    write_npz(tmp_path / "a.npz", binary)
    write_npz(tmp_path / "b.npz", soft, logits)
    generator = PrecomputedMasks(tmp_path, vocabulary=[["x"], ["y"], ["z"], ["w"]], training_vocabulary="coco_panoptic")
    a, b = generator(batch_for(["a", "b"], [(6, 9), (6, 9)]))
    assert torch.equal(a.masks, binary.float()) and a.logits is None
    torch.testing.assert_close(b.masks, soft)
    torch.testing.assert_close(b.logits, logits)
    assert b.logits_vocabulary == [["x"], ["y"], ["z"], ["w"]]
    assert generator.training_vocabulary is not None and len(generator.training_vocabulary) == 133


def test_npz_masks_are_resized_to_the_original_image(tmp_path: Path) -> None:
    masks = torch.zeros(1, 2, 2)
    masks[0, :, 1] = 1.0
    write_npz(tmp_path / "img.npz", masks)
    (proposals,) = PrecomputedMasks(tmp_path)(batch_for(["img"], [(4, 4)]))
    # bilinear, align_corners=False: columns at x = 0.25, 0.75, 1.25, 1.75 of the 2-pixel row -> 0, 0.25, 0.75, 1
    torch.testing.assert_close(proposals.masks[0, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))


def test_coco_rle_json_round_trip_by_file_name_and_image_id(tmp_path: Path) -> None:
    first, second = torch.rand(2, 5, 7) > 0.4, torch.rand(3, 8, 3) > 0.6
    logits = torch.randn(2, 4)
    by_name = write_coco_rle_json(tmp_path / "masks.json", [("one", first, logits), ("two", second, None)])
    entries = json.loads(by_name.read_text())
    assert len(entries) == 5 and set(entries[0]["segmentation"]) == {"size", "counts"}
    with pytest.raises(ValueError, match="either every entry"):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps([entries[0], {k: v for k, v in entries[1].items() if k != "logits"}]))
        PrecomputedMasks(bad)(batch_for(["one"], [(5, 7)]))
    one, two = PrecomputedMasks(by_name)(batch_for(["one", "two"], [(5, 7), (8, 3)]))
    assert torch.equal(one.masks, first.float()) and torch.equal(two.masks, second.float())
    torch.testing.assert_close(one.logits, logits)
    assert two.logits is None
    by_id = write_coco_rle_json(tmp_path / "ids.json", [(17, first, None)], key="image_id")
    batch = {"image": [torch.zeros(3, 5, 7)], "meta": [{"file_name": "x/other.jpg", "image_id": 17,
                                                        "height": 5, "width": 7}]}
    (found,) = PrecomputedMasks(by_id)(batch)
    assert torch.equal(found.masks, first.float())


def test_missing_images_and_bad_inputs_name_the_fix(tmp_path: Path) -> None:
    write_npz(tmp_path / "a.npz", torch.ones(1, 2, 2, dtype=torch.bool))
    with pytest.raises(FileNotFoundError, match="missing: empty"):
        PrecomputedMasks(tmp_path)(batch_for(["b"], [(2, 2)]))
    (empty,) = PrecomputedMasks(tmp_path, missing="empty")(batch_for(["b"], [(2, 3)]))
    assert empty.masks.shape == (0, 2, 3)
    with pytest.raises(FileNotFoundError, match="Precomputed masks not found"):
        PrecomputedMasks(tmp_path / "nowhere")
    np.savez(tmp_path / "c.npz", masks=np.full((1, 2, 2), 2.0, dtype=np.float32))
    with pytest.raises(ValueError, match="sigmoid"):
        PrecomputedMasks(tmp_path)(batch_for(["c"], [(2, 2)]))
    with pytest.raises(ValueError, match="plus void"):
        MaskProposals(torch.zeros(2, 2, 2), torch.zeros(2, 3), [["a"]])
