"""Data and zero-shot evaluation helpers of the toy CLIP (``tools/pretrain_toy_clip.py``, ``checkpoints/ovs_toy_clip``).

Only torch and open_clip-style models are used here (``model.encode_image`` / ``model.encode_text``), so the data
layer does not depend on ``ovs.backbones``. Images are ``uint8`` in ``[0, 255]``; :func:`normalize` applies the CLIP
mean/std.

Evaluation protocol (held-out images: the first ``num_images`` images of the ``val`` split, rendered in memory from
the split seed; the toy CLIP never sees them, it is trained on the disjoint ``pretrain`` split):

* **Retrieval**: one caption per image (the first complete scene caption). Image→text R@k: the fraction of images for
  which one of the ``k`` highest-scoring captions is textually identical to the image's caption (identical texts of
  different images count as correct, so duplicates do not punish the model); text→image R@k symmetrically.
* **Thing classification**: every visible thing instance is cropped (a square of side ``1.6 x`` the longer side of
  its visible bounding box, at least 24 px, shifted to lie inside the image), resized to the model's input size and
  classified among the 36 thing classes with the prompt ``"a photo of a {}."`` and each class's first name; top-1
  accuracy over all crops and over crops of seen / unseen classes.
* **Stuff classification**: whole images whose background is a single stuff class, classified among the 8 stuff
  classes with the same prompt; top-1 accuracy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from ovs.data.synthetic.classes import CLASSES, NUM_THINGS, STUFF
from ovs.data.synthetic.generate import render_split_image, scene_segments

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
"""CLIP image mean (RGB, in ``[0, 1]``) used by the toy CLIP."""

OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
"""CLIP image std (RGB, in ``[0, 1]``) used by the toy CLIP."""

CLASSIFICATION_TEMPLATE = "a photo of a {}."
"""Prompt of the zero-shot classification metrics."""


def load_caption_split(root: str | Path, split: str) -> tuple[list[Path], list[list[str]]]:
    """Image paths and all captions per image of ``<root>/coco/annotations/captions_<split>2017.json``."""
    coco = Path(root) / "coco"
    ann_file = coco / "annotations" / f"captions_{split}2017.json"
    if not ann_file.is_file():
        raise FileNotFoundError(f"{ann_file} does not exist; generate it with ovs.data.synthetic.generate_split")
    data = json.loads(ann_file.read_text())
    captions: dict[int, list[str]] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        captions[ann["image_id"]].append(ann["caption"])
    paths = [coco / f"{split}2017" / img["file_name"] for img in data["images"]]
    return paths, [captions[img["id"]] for img in data["images"]]


def load_images(paths: list[Path]) -> Tensor:
    """Decode equally sized RGB images into one ``uint8`` tensor ``[N, 3, H, W]``."""
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]  # N x [H, W, 3]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def random_resized_crop(
    images: Tensor,
    size: int,
    scale: tuple[float, float] = (0.7, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_prob: float = 0.5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Batched random resized crop and horizontal flip with one bilinear ``grid_sample``.

    Args:
        images: ``uint8`` or float ``[B, 3, H, W]`` in ``[0, 255]``.
        size: output side.
        scale: range of the crop area as a fraction of the image area.
        ratio: range of the crop aspect ratio (width / height), sampled log-uniformly.
        flip_prob: probability of a horizontal flip.
        generator: random generator (for reproducible runs).

    Returns:
        float ``[B, 3, size, size]`` in ``[0, 255]``.
    """
    b = images.shape[0]
    area = torch.empty(b).uniform_(*scale, generator=generator)  # [B]
    log_ratio = torch.empty(b).uniform_(float(np.log(ratio[0])), float(np.log(ratio[1])), generator=generator)
    aspect = log_ratio.exp()
    w = (area * aspect).sqrt().clamp(max=1.0)  # [B] crop width as a fraction of the image width
    h = (area / aspect).sqrt().clamp(max=1.0)
    cx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - w)  # [B] centre in [-1, 1] coordinates
    cy = (torch.rand(b, generator=generator) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(b, generator=generator) < flip_prob, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)  # [B, S, S, 2]
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def normalize(images: Tensor, mean: tuple[float, ...] = OPENAI_MEAN, std: tuple[float, ...] = OPENAI_STD) -> Tensor:
    """``[B, 3, H, W]`` images in ``[0, 255]`` → CLIP-normalised float."""
    m = torch.tensor(mean, device=images.device).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, device=images.device).view(1, 3, 1, 1) * 255.0
    return (images.float() - m) / s


@dataclass
class EvalSet:
    """Held-out zero-shot evaluation data.

    Attributes:
        images: ``uint8 [N, 3, S, S]`` whole images.
        captions: ``N`` captions (first complete scene caption of each image).
        crops: ``uint8 [M, 3, S, S]`` thing-instance crops.
        crop_labels: ``int64 [M]`` thing class id of each crop.
        stuff_labels: ``int64 [N]`` stuff class (``0..7``) of single-stuff images, ``-1`` for two-stuff images.
        sem_seg: ``int64 [N, S, S]`` contiguous semantic labels of the whole images.
    """

    images: Tensor
    captions: list[str]
    crops: Tensor
    crop_labels: Tensor
    stuff_labels: Tensor
    sem_seg: Tensor


def _square_crop(image: np.ndarray, mask: np.ndarray, size: int) -> Tensor:
    """Square crop around a bool ``mask [H, W]`` of ``image [H, W, 3]``, resized → ``uint8 [3, size, size]``."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    side = int(min(max(1.6 * max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1), 24), min(mask.shape)))
    cy, cx = (rows[0] + rows[-1] + 1) / 2, (cols[0] + cols[-1] + 1) / 2
    y0 = int(np.clip(round(cy - side / 2), 0, mask.shape[0] - side))
    x0 = int(np.clip(round(cx - side / 2), 0, mask.shape[1] - side))
    crop = torch.from_numpy(image[y0:y0 + side, x0:x0 + side].copy()).permute(2, 0, 1)[None].float()  # [1, 3, s, s]
    out = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out[0].round().clamp(0, 255).to(torch.uint8)


def render_eval_set(num_images: int, seed: int = 0, image_size: int = 112, split: str = "val") -> EvalSet:
    """Render the first ``num_images`` images of ``split`` in memory and build the evaluation data."""
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    images, captions, crops, crop_labels, stuff_labels, sem = [], [], [], [], [], []
    for index in range(num_images):
        scene, texts = render_split_image(seed, split, index, image_size)
        images.append(torch.from_numpy(scene.image).permute(2, 0, 1))
        captions.append(texts[0])
        for j, inst in enumerate(scene.instances):
            crops.append(_square_crop(scene.image, scene.instance_map == j, image_size))
            crop_labels.append(inst.class_id)
        stuff_labels.append(scene.stuff[0] if len(scene.stuff) == 1 else -1)
        sem.append(torch.from_numpy(scene_segments(scene)[1].astype(np.int64)))
    return EvalSet(
        images=torch.stack(images),
        captions=captions,
        crops=torch.stack(crops) if crops else torch.zeros(0, 3, image_size, image_size, dtype=torch.uint8),
        crop_labels=torch.tensor(crop_labels, dtype=torch.int64),
        stuff_labels=torch.tensor(stuff_labels, dtype=torch.int64),
        sem_seg=torch.stack(sem),
    )


@torch.no_grad()
def encode_images(
    model: nn.Module,
    images: Tensor,
    mean: tuple[float, ...] = OPENAI_MEAN,
    std: tuple[float, ...] = OPENAI_STD,
    batch_size: int = 256,
) -> Tensor:
    """L2-normalised image embeddings ``[N, D]`` of ``uint8 [N, 3, S, S]`` images."""
    out = [
        model.encode_image(normalize(images[i:i + batch_size], mean, std)).float()
        for i in range(0, len(images), batch_size)
    ]
    return F.normalize(torch.cat(out), dim=-1)


@torch.no_grad()
def encode_texts(model: nn.Module, tokenizer: object, texts: list[str], batch_size: int = 512) -> Tensor:
    """L2-normalised text embeddings ``[N, D]`` (``tokenizer`` is an open_clip tokenizer)."""
    out = [model.encode_text(tokenizer(texts[i:i + batch_size])).float() for i in range(0, len(texts), batch_size)]
    return F.normalize(torch.cat(out), dim=-1)


def retrieval_recall(
    image_emb: Tensor, text_emb: Tensor, captions: list[str], ks: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """Image↔text recall@k in percent; a retrieved item is correct when its caption equals the query's caption.

    Args:
        image_emb: ``[N, D]`` normalised image embeddings.
        text_emb: ``[N, D]`` normalised embeddings of ``captions`` (caption ``i`` belongs to image ``i``).
        captions: the ``N`` caption strings.
        ks: the recall cut-offs.

    Returns:
        ``{"i2t_r1": ..., "t2i_r1": ..., "i2t_r5": ..., ...}``.
    """
    n = len(captions)
    if image_emb.shape[0] != n or text_emb.shape[0] != n:
        raise ValueError(
            f"need one caption per image: {image_emb.shape[0]} images, {text_emb.shape[0]} texts, {n} captions"
        )
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    cap_id = torch.tensor([ids[c] for c in captions])  # [N] caption-text id per item
    sim = image_emb @ text_emb.T  # [N images, N texts]
    out: dict[str, float] = {}
    for k in ks:
        top_t = sim.topk(min(k, n), dim=1).indices  # [N, k] texts per image
        top_i = sim.T.topk(min(k, n), dim=1).indices  # [N, k] images per text
        out[f"i2t_r{k}"] = 100.0 * (cap_id[top_t] == cap_id[:, None]).any(1).float().mean().item()
        out[f"t2i_r{k}"] = 100.0 * (cap_id[top_i] == cap_id[:, None]).any(1).float().mean().item()
    return out


def class_prompts(class_ids: list[int]) -> list[str]:
    """``"a photo of a {first name}."`` for each contiguous class id."""
    return [CLASSIFICATION_TEMPLATE.format(CLASSES[c].name) for c in class_ids]


def evaluate_retrieval(
    model: nn.Module,
    tokenizer: object,
    eval_set: EvalSet,
    mean: tuple[float, ...] = OPENAI_MEAN,
    std: tuple[float, ...] = OPENAI_STD,
) -> dict[str, float]:
    """Retrieval metrics (percent) of ``model`` on ``eval_set``."""
    image_emb = encode_images(model, eval_set.images, mean, std)  # [N, D]
    text_emb = encode_texts(model, tokenizer, eval_set.captions)  # [N, D]
    return retrieval_recall(image_emb, text_emb, eval_set.captions)


def evaluate_toy_clip(
    model: nn.Module,
    tokenizer: object,
    eval_set: EvalSet,
    mean: tuple[float, ...] = OPENAI_MEAN,
    std: tuple[float, ...] = OPENAI_STD,
) -> dict[str, float]:
    """All global zero-shot metrics (percent): retrieval R@1/R@5 and thing / stuff classification accuracy.

    Keys: ``i2t_r1, t2i_r1, i2t_r5, t2i_r5, thing_acc, thing_acc_seen, thing_acc_unseen, stuff_acc`` and the number
    of crops / single-stuff images ``num_crops, num_stuff_images``.
    """
    metrics = evaluate_retrieval(model, tokenizer, eval_set, mean, std)
    thing_text = encode_texts(model, tokenizer, class_prompts(list(range(NUM_THINGS))))  # [36, D]
    pred = (encode_images(model, eval_set.crops, mean, std) @ thing_text.T).argmax(1)  # [M]
    correct = (pred == eval_set.crop_labels).float()
    seen = torch.tensor([CLASSES[int(c)].seen for c in eval_set.crop_labels], dtype=torch.bool)
    metrics["thing_acc"] = 100.0 * correct.mean().item()
    metrics["thing_acc_seen"] = 100.0 * correct[seen].mean().item()
    metrics["thing_acc_unseen"] = 100.0 * correct[~seen].mean().item()
    single = eval_set.stuff_labels >= 0
    stuff_text = encode_texts(model, tokenizer, class_prompts([NUM_THINGS + s for s in range(len(STUFF))]))  # [8, D]
    stuff_pred = (encode_images(model, eval_set.images[single], mean, std) @ stuff_text.T).argmax(1)
    metrics["stuff_acc"] = 100.0 * (stuff_pred == eval_set.stuff_labels[single]).float().mean().item()
    metrics["num_crops"] = float(len(eval_set.crop_labels))
    metrics["num_stuff_images"] = float(int(single.sum()))
    return metrics
