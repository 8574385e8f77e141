"""Re-creations of the authors' released inference loops, the baselines of ``tools/benchmark.py`` (training-free spec
§2.2-2.4, §3.2-3.3; written from the spec, their code is not downloaded).

* :class:`SCLIPReference`: SCLIP's ``CLIPForSegmentation`` loop, one 224 window per forward through a sequence-first
  (LND) ViT with explicit ``bmm`` q-q / k-k attention maps, full-size ``F.pad`` canvas updates, the one-hot synonym
  merge.
* :class:`GEMReference`: the ``gem_torch`` wrapper's forward with explicit q-k and self-self attention maps.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ovs.backbones import CLIP, TextClassifier, interpolate_pos_embed
from ovs.inference import resize_for_inference


def seq_first_attention(block: torch.nn.Module, x: Tensor) -> Tensor:
    """``nn.MultiheadAttention(batch_first=False)`` as in OpenAI CLIP / open_clip <= 2.23 (no fast path): LND."""
    attn = block.attn
    return F.multi_head_attention_forward(
        x, x, x, attn.embed_dim, attn.num_heads, attn.in_proj_weight, attn.in_proj_bias, None, None, False, 0.0,
        attn.out_proj.weight, attn.out_proj.bias, training=False, need_weights=False,
    )[0]


def seq_first_block(block: torch.nn.Module, x: Tensor) -> Tensor:
    x = x + seq_first_attention(block, block.ln_1(x))
    return x + block.mlp(block.ln_2(x))


def heads_first(t: Tensor, num_heads: int) -> Tensor:
    """``[L, N, C] -> [N * H, L, d]`` (the reference's ``contiguous().view().transpose()``)."""
    length, batch, width = t.shape
    return t.contiguous().view(length, batch * num_heads, width // num_heads).transpose(0, 1)


def merge_heads(t: Tensor, batch: int) -> Tensor:
    """``[N * H, L, d] -> [L, N, C]``."""
    return t.transpose(0, 1).contiguous().view(t.shape[1], batch, -1)


def embed_seq_first(clip: CLIP, image: Tensor, pos_mode: str) -> tuple[Tensor, tuple[int, int]]:
    visual = clip.model.visual
    x = visual.conv1(image)
    grid = (x.shape[-2], x.shape[-1])
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype,
                                                        device=x.device), x], dim=1)
    x = x + interpolate_pos_embed(visual.positional_embedding, tuple(visual.grid_size), grid, pos_mode)
    return visual.ln_pre(x).permute(1, 0, 2), grid  # LND


class SCLIPReference:
    """SCLIP's ``CLIPForSegmentation.predict`` loop (spec §2.2-2.4), batch size 1, one window per forward."""

    def __init__(self, clip: CLIP, classifier: TextClassifier, config: dict[str, Any], autocast: Any) -> None:
        self.clip, self.text, self.config, self.autocast = clip, classifier.embeddings, config, autocast
        self.query_idx = classifier.name_to_class

    def encode_image(self, image: Tensor) -> Tensor:
        visual = self.clip.model.visual
        x, _ = embed_seq_first(self.clip, image, "dino")
        blocks = visual.transformer.resblocks
        for block in blocks[:-1]:
            x = seq_first_block(block, x)
        last = blocks[-1]
        y = last.ln_1(x)
        q, k, v = F.linear(y, last.attn.in_proj_weight, last.attn.in_proj_bias).chunk(3, dim=-1)
        heads = last.attn.num_heads
        q, k, v = (heads_first(t, heads) for t in (q, k, v))
        scale = q.shape[-1] ** -0.5
        attn = torch.softmax(torch.bmm(q * scale, q.transpose(1, 2)), -1)
        attn = attn + torch.softmax(torch.bmm(k * scale, k.transpose(1, 2)), -1)
        out = F.linear(merge_heads(torch.bmm(attn, v), x.shape[1]), last.attn.out_proj.weight, last.attn.out_proj.bias)
        x = x + out
        x = x + last.mlp(last.ln_2(x))
        return visual.ln_post(x.permute(1, 0, 2)) @ visual.proj

    def forward_feature(self, crop: Tensor) -> Tensor:
        with self.autocast():
            features = self.encode_image(crop)
        features = features.float()
        features = features / features.norm(dim=-1, keepdim=True)
        logits = features[:, 1:] @ self.text.T
        patch = self.clip.dense.patch_size[0]
        h, w = crop.shape[-2] // patch, crop.shape[-1] // patch
        logits = logits.permute(0, 2, 1).reshape(-1, logits.shape[-1], h, w)
        return F.interpolate(logits, size=crop.shape[-2:], mode="bilinear")

    def forward_slide(self, image: Tensor, ori_shape: tuple[int, int]) -> Tensor:
        stride, crop = self.config["slide_stride"], self.config["slide_crop"]
        _, _, h_img, w_img = image.shape
        h_grids = max(h_img - crop + stride - 1, 0) // stride + 1
        w_grids = max(w_img - crop + stride - 1, 0) // stride + 1
        preds = image.new_zeros((1, len(self.query_idx), h_img, w_img))
        count_mat = image.new_zeros((1, 1, h_img, w_img))
        for h_idx in range(h_grids):
            for w_idx in range(w_grids):
                y1, x1 = h_idx * stride, w_idx * stride
                y2, x2 = min(y1 + crop, h_img), min(x1 + crop, w_img)
                y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
                crop_logits = self.forward_feature(image[:, :, y1:y2, x1:x2])
                preds += F.pad(crop_logits, (x1, w_img - x2, y1, h_img - y2))
                count_mat[:, :, y1:y2, x1:x2] += 1
        return F.interpolate(preds / count_mat, size=ori_shape, mode="bilinear")

    def postprocess(self, seg_logits: Tensor) -> Tensor:
        seg_logits = (seg_logits[0] * self.config["logit_scale"]).softmax(0)  # [K_names, H, W]
        num_cls, num_queries = int(self.query_idx.max()) + 1, len(self.query_idx)
        if num_cls != num_queries:
            cls_index = F.one_hot(self.query_idx).T.view(num_cls, num_queries, 1, 1).to(seg_logits.dtype)
            seg_logits = (seg_logits.unsqueeze(0) * cls_index).max(1)[0]
        if self.config["area_thd"] is not None:
            predictions = F.one_hot(seg_logits.argmax(0), num_cls).to(seg_logits.dtype)
            area_pred = predictions[:, :, 1:].sum((0, 1), keepdim=True)
            area_pred = (area_pred > self.config["area_thd"] * area_pred.sum()).to(seg_logits.dtype)
            seg_logits[1:] *= area_pred.transpose(0, -1)
        seg_pred = seg_logits.argmax(0, keepdim=True)
        seg_pred[seg_logits.max(0, keepdim=True)[0] < self.config["prob_thd"]] = 0
        return seg_pred[0]

    def __call__(self, images: list[Tensor]) -> list[Tensor]:
        labels = []
        for image in images:
            resized = resize_for_inference(image, "short", self.config["size"], 2048)
            normalised = self.clip.normalize(resized[None])
            labels.append(self.postprocess(self.forward_slide(normalised, tuple(image.shape[-2:]))))
        return labels


class GEMReference:
    """The ``gem_torch`` wrapper forward (spec §3.2-3.3) with the VOC background rule, batch size 1.

    ``prompts_per_call``: encode the prompts on every call, as ``GEMWrapper.forward(image, text)`` and
    ``batched_forward`` do (the package has no way to pass cached text embeddings); otherwise use the precomputed
    embeddings (the image path alone).
    """

    def __init__(
        self, clip: CLIP, classifier: TextClassifier, depth: int, class_ids: Tensor, prompts_per_call: bool = False
    ) -> None:
        self.clip, self.depth = clip, depth
        keep = torch.isin(classifier.name_to_class, class_ids)
        self.text = classifier.embeddings[keep]
        self.prompts = [f"a photo of a {classifier.class_names[c][0]}."
                        for c in classifier.name_to_class[keep].tolist()]
        self.prompts_per_call = prompts_per_call
        self.class_ids = class_ids

    def encode_image(self, image: Tensor) -> Tensor:
        visual = self.clip.model.visual
        x, grid = embed_seq_first(self.clip, image, "timm")
        blocks = visual.transformer.resblocks
        start = len(blocks) - self.depth
        for block in blocks[:start]:
            x = seq_first_block(block, x)
        x_gem = x
        for block in blocks[start:]:
            y = block.ln_1(x)
            q, k, v = F.linear(y, block.attn.in_proj_weight, block.attn.in_proj_bias).chunk(3, dim=-1)
            heads, batch = block.attn.num_heads, x.shape[1]
            q, k, v = (heads_first(t, heads) for t in (q, k, v))
            scale = q.shape[-1] ** -0.5
            attn = torch.softmax(torch.bmm(q * scale, k.transpose(1, 2)), -1)
            x_ori = F.linear(merge_heads(torch.bmm(attn, v), batch), block.attn.out_proj.weight,
                             block.attn.out_proj.bias)
            inv_temp = (y.norm(dim=-1).mean(dim=0) * scale).repeat_interleave(heads)[:, None, None]  # [N * H, 1, 1]
            outputs = []
            for z in (v, k, q):
                z = F.normalize(z, dim=-1)
                z = torch.softmax(torch.bmm(z, z.transpose(1, 2)) * inv_temp, -1) @ z
                z = F.normalize(z, dim=-1)
                outputs.append(torch.softmax(torch.bmm(z, z.transpose(1, 2)) * inv_temp, -1) @ v)
            x_ss = F.linear(merge_heads(sum(outputs) / 3, batch), block.attn.out_proj.weight,
                            block.attn.out_proj.bias)
            x_gem = x_gem + x_ss
            x = x + x_ori
            x = x + block.mlp(block.ln_2(x))
        feat_gem = visual.ln_post(x_gem.permute(1, 0, 2)) @ visual.proj
        visual.ln_post(x.permute(1, 0, 2)) @ visual.proj  # feat_ori, returned by the wrapper as well
        return feat_gem

    def __call__(self, images: list[Tensor]) -> list[Tensor]:
        labels = []
        patch = self.clip.dense.patch_size[0]
        for image in images:
            normalised = self.clip.normalize(image[None])
            features = F.normalize(self.encode_image(normalised)[:, 1:], dim=-1)
            text = self.clip.encode_text(self.prompts) if self.prompts_per_call else self.text
            h, w = normalised.shape[-2] // patch, normalised.shape[-1] // patch
            logits = (features @ text.T).permute(0, 2, 1).reshape(1, -1, h, w)
            logits = F.interpolate(logits, size=normalised.shape[-2:], mode="bilinear")[0]  # [K, H, W]
            low = logits.amin(dim=(1, 2), keepdim=True)
            minmax = (logits - low) / (logits.amax(dim=(1, 2), keepdim=True) - low)
            pred = self.class_ids[minmax.argmax(0)]
            pred[torch.softmax(100 * logits, dim=0).max(0)[0] < 0.85] = 0
            labels.append(pred)
        return labels
