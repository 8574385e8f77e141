"""Mask2Former's training criterion (Mask2Former paper §3.3 / §4 "Training settings", issue 13 item 4).

* **Hungarian matching** per image: cost
  ``C[q, n] = w_class · (−p_q(c_n)) + w_mask · BCE(q, n) + w_dice · dice(q, n)`` with ``p_q = softmax(class
  logits)`` and BCE / dice measured on the same ``num_points`` points drawn uniformly at random (shared by every
  prediction and target of the image); ``scipy.optimize.linear_sum_assignment`` solves it.
* **Losses** (weights 2 / 5 / 5): cross-entropy over ``K + 1`` classes, unmatched queries labelled void, with class
  weights ``1`` and ``eos_coef`` (0.1) for void (a weighted mean, ``F.cross_entropy(weight=...)``); sigmoid BCE and
  dice between each matched mask and its target on ``num_points`` points chosen by uncertainty-based importance
  sampling (PointRend: ``oversample_ratio · P`` random points, the ``importance_sample_ratio · P`` most uncertain
  ones, ``|logit|`` smallest, plus random ones), both summed over masks and divided by the number of target masks in
  the batch (averaged over processes).
* **Deep supervision**: every earlier decoder prediction (``aux_outputs``) is matched and weighted the same way.

``num_points=None`` replaces both samplings by every pixel of the prediction grid (targets resized bilinearly to it),
a deterministic mode for tests and small images.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

Target = dict[str, Tensor]
"""Per image: ``labels`` ``int64 [N]`` (0..K-1) and ``masks`` ``[N, H, W]`` (0/1) covering the padded network input
(the same ``H, W`` for every image of the batch; predictions are at ``H/4, W/4``)."""


def point_sample(inputs: Tensor, coords: Tensor) -> Tensor:
    """Bilinear values of ``inputs`` ``[R, C, H, W]`` at ``coords`` ``[R, P, 2]`` ((x, y) in [0, 1], pixel-area
    convention as ``align_corners=False``) -> ``[R, C, P]`` (detectron2 ``point_sample``)."""
    return F.grid_sample(inputs, 2.0 * coords[:, :, None] - 1.0, align_corners=False)[..., 0]


def uncertain_point_coords(logits: Tensor, num_points: int, oversample_ratio: float,
                           importance_sample_ratio: float) -> Tensor:
    """PointRend importance sampling (Mask2Former ``get_uncertain_point_coords_with_randomness``) on mask logits
    ``[R, 1, H, W]`` -> ``[R, num_points, 2]``: the ``importance_sample_ratio · P`` points of smallest ``|logit|``
    among ``oversample_ratio · P`` uniform ones, then uniform points for the rest."""
    rois = logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    coords = torch.rand(rois, num_sampled, 2, device=logits.device)  # [R, S, 2]
    uncertainty = -point_sample(logits, coords)[:, 0].abs()  # [R, S]
    num_uncertain = int(importance_sample_ratio * num_points)
    index = uncertainty.topk(num_uncertain, dim=1).indices  # [R, U]
    chosen = coords.gather(1, index[..., None].expand(-1, -1, 2))  # [R, U, 2]
    random = torch.rand(rois, num_points - num_uncertain, 2, device=logits.device)
    return torch.cat([chosen, random], dim=1)


def pairwise_sigmoid_ce(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean BCE-with-logits of every prediction ``[Q, P]`` against every target ``[N, P]`` -> ``[Q, N]``."""
    positive = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    negative = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (positive @ targets.T + negative @ (1 - targets).T) / logits.shape[1]


def pairwise_dice(logits: Tensor, targets: Tensor) -> Tensor:
    """Dice loss ``1 − (2 Σ p t + 1) / (Σ p + Σ t + 1)`` (``p = sigmoid``) of every pair -> ``[Q, N]``."""
    probs = logits.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def dense_targets(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Target masks ``[N, H, W]`` as float at the prediction grid ``size`` (bilinear when the sizes differ)."""
    masks = masks.float()
    if masks.shape[0] == 0 or tuple(masks.shape[-2:]) == size:
        return masks
    return F.interpolate(masks[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets per image (Mask2Former ``HungarianMatcher``).

    Args:
        cost_class, cost_mask, cost_dice: cost weights (2, 5, 5).
        num_points: uniform points shared by the image's predictions and targets (12544); ``None``: every pixel.
    """

    def __init__(self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0,
                 num_points: int | None = 12544) -> None:
        super().__init__()
        self.cost_class, self.cost_mask, self.cost_dice = cost_class, cost_mask, cost_dice
        self.num_points = num_points

    def cost_matrix(self, logits: Tensor, masks: Tensor, target: Target) -> Tensor:
        """``[Q, N]`` matching cost of one image: ``logits`` ``[Q, K + 1]``, ``masks`` ``[Q, h, w]`` (logits)."""
        cost_class = -logits.float().softmax(-1)[:, target["labels"]]  # [Q, N]
        if self.num_points is None:
            predicted = masks.float().flatten(1)  # [Q, h w]
            wanted = dense_targets(target["masks"], tuple(masks.shape[-2:])).flatten(1)  # [N, h w]
        else:
            coords = torch.rand(1, self.num_points, 2, device=masks.device)
            predicted = point_sample(masks[:, None].float(), coords.expand(masks.shape[0], -1, -1))[:, 0]
            wanted = point_sample(target["masks"][:, None].float(),
                                  coords.expand(target["masks"].shape[0], -1, -1))[:, 0]  # [N, P]
        return (self.cost_class * cost_class + self.cost_mask * pairwise_sigmoid_ce(predicted, wanted)
                + self.cost_dice * pairwise_dice(predicted, wanted))

    @torch.no_grad()
    def forward(self, logits: Tensor, masks: Tensor, targets: list[Target]) -> list[tuple[Tensor, Tensor]]:
        """``logits`` ``[B, Q, K + 1]``, ``masks`` ``[B, Q, h, w]`` -> per image (query indices, target indices),
        ``int64``, ordered by query."""
        indices = []
        for image_logits, image_masks, target in zip(logits, masks, targets):
            if target["labels"].numel() == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty))
                continue
            cost = self.cost_matrix(image_logits, image_masks, target)
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices


class Mask2FormerCriterion(nn.Module):
    """Matching + weighted losses on the last and every auxiliary decoder prediction (Mask2Former ``SetCriterion``).

    Args:
        num_classes: K (the void class is K).
        class_weight, mask_weight, dice_weight: loss and matching-cost weights (2, 5, 5).
        eos_coef: cross-entropy weight of the void class (0.1).
        num_points, oversample_ratio, importance_sample_ratio: point sampling (12544, 3.0, 0.75); ``num_points=None``
            uses every pixel of the prediction grid in the matcher and the losses.
        deep_supervision: also supervise ``aux_outputs``.
    """

    def __init__(self, num_classes: int, class_weight: float = 2.0, mask_weight: float = 5.0, dice_weight: float = 5.0,
                 eos_coef: float = 0.1, num_points: int | None = 12544, oversample_ratio: float = 3.0,
                 importance_sample_ratio: float = 0.75, deep_supervision: bool = True) -> None:
        super().__init__()
        if num_points is not None and num_points < 1:
            raise ValueError(f"num_points must be >= 1 or None (every pixel), got {num_points}.")
        if oversample_ratio < 1 or not 0 <= importance_sample_ratio <= 1:
            raise ValueError("Need oversample_ratio >= 1 and 0 <= importance_sample_ratio <= 1, got "
                             f"{oversample_ratio}, {importance_sample_ratio}.")
        self.num_classes = num_classes
        self.weights = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
        self.num_points, self.oversample_ratio = num_points, oversample_ratio
        self.importance_sample_ratio, self.deep_supervision = importance_sample_ratio, deep_supervision
        self.matcher = HungarianMatcher(class_weight, mask_weight, dice_weight, num_points)
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    def loss_labels(self, logits: Tensor, targets: list[Target], indices: list[tuple[Tensor, Tensor]]) -> Tensor:
        """Weighted cross-entropy over ``[B, Q, K + 1]``; unmatched queries target the void class K."""
        classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)  # [B, Q]
        for image, (rows, cols) in enumerate(indices):
            classes[image, rows.to(logits.device)] = targets[image]["labels"][cols.to(logits.device)]
        return F.cross_entropy(logits.float().transpose(1, 2), classes, self.empty_weight)

    def loss_masks(self, masks: Tensor, targets: list[Target], indices: list[tuple[Tensor, Tensor]],
                   num_masks: float) -> tuple[Tensor, Tensor]:
        """BCE and dice of the matched masks ``[M, h, w]`` on importance-sampled points, summed / ``num_masks``."""
        predicted = torch.cat([masks[image, rows.to(masks.device)] for image, (rows, _) in enumerate(indices)])
        if predicted.shape[0] == 0:
            zero = masks.sum() * 0.0
            return zero, zero
        if self.num_points is None:
            size = tuple(masks.shape[-2:])
            wanted = torch.cat([dense_targets(t["masks"][cols.to(masks.device)], size)
                                for t, (_, cols) in zip(targets, indices)]).flatten(1)  # [M, h w]
            point_logits = predicted.float().flatten(1)
        else:
            wanted_masks = torch.cat([t["masks"][cols.to(masks.device)].float()
                                      for t, (_, cols) in zip(targets, indices)])  # [M, H, W]
            with torch.no_grad():
                coords = uncertain_point_coords(predicted[:, None].float(), self.num_points, self.oversample_ratio,
                                                self.importance_sample_ratio)  # [M, P, 2]
                wanted = point_sample(wanted_masks[:, None], coords)[:, 0]  # [M, P]
            point_logits = point_sample(predicted[:, None].float(), coords)[:, 0]
        bce = F.binary_cross_entropy_with_logits(point_logits, wanted, reduction="none").mean(1).sum() / num_masks
        probs = point_logits.sigmoid()
        dice = 1 - (2 * (probs * wanted).sum(1) + 1) / (probs.sum(1) + wanted.sum(1) + 1)
        return bce, dice.sum() / num_masks

    def num_masks(self, targets: list[Target], device: torch.device) -> float:
        """Target masks in the batch, averaged over processes, at least 1."""
        count = torch.tensor(float(sum(t["labels"].numel() for t in targets)), device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(count)
            count = count / dist.get_world_size()
        return max(float(count), 1.0)

    def layer_losses(self, output: dict[str, Tensor], targets: list[Target], num_masks: float) -> dict[str, Tensor]:
        """Match one decoder prediction and compute its unweighted ``loss_ce``, ``loss_mask`` and ``loss_dice``."""
        indices = self.matcher(output["pred_logits"], output["pred_masks"], targets)
        bce, dice = self.loss_masks(output["pred_masks"], targets, indices, num_masks)
        return {"loss_ce": self.loss_labels(output["pred_logits"], targets, indices), "loss_mask": bce,
                "loss_dice": dice}

    def forward(self, outputs: dict[str, Tensor | list[dict[str, Tensor]]],
                targets: list[Target]) -> dict[str, Tensor]:
        """Unweighted losses (``loss_ce``, ``loss_mask``, ``loss_dice`` and ``<name>_<i>`` for auxiliary layer i)
        and their weighted sum ``loss``."""
        logits = outputs["pred_logits"]
        assert isinstance(logits, Tensor)
        num_masks = self.num_masks(targets, logits.device)
        layers = [("", {"pred_logits": logits, "pred_masks": outputs["pred_masks"]})]
        if self.deep_supervision:
            layers += [(f"_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", []))]  # type: ignore
        losses: dict[str, Tensor] = {}
        total = logits.new_zeros((), dtype=torch.float32)
        for suffix, output in layers:
            for name, value in self.layer_losses(output, targets, num_masks).items():  # type: ignore[arg-type]
                losses[name + suffix] = value
                total = total + self.weights[name] * value
        losses["loss"] = total
        return losses
