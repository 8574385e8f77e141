"""Test-time prompt inversion for one image (InvSeg paper §"Method"; spec §9).

Per image: encode the ``S x S`` input and its augmented views with the VAE once; initialise the learnable token
embeddings ``E = tau(y)`` (eq. 1: the text encoder is then out of the loop); for ``steps`` iterations noise the view
latents at a random ``t in [t_min, t_max]``, capture the attention of the configured resolutions, build the refined
class maps (eq. 2) and minimise ``L = L_Cluster + alpha * L_Etrp`` (eq. 8 + entropy) with Adam; finally predict from
the un-augmented image at ``t = inference_t`` with the learned embeddings (argmax over categories).
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ovs.methods.invseg.attention import AttentionCapture
from ovs.methods.invseg.filtering import CLASS_SOURCES
from ovs.methods.invseg.losses import clustering_loss, entropy_loss
from ovs.methods.invseg.maps import QUERY_UPSAMPLING, aggregate, class_maps
from ovs.methods.invseg.prompt import PromptBatch
from ovs.methods.invseg.views import CropBox, crop_views, paste_views, sample_crop_boxes
from ovs.methods.invseg.weights import DiffusionModel

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class InvSegConfig:
    """Every hyper-parameter and open point of InvSeg (paper §4.1 and Tables 2-7; spec §2 defaults).

    Attributes:
        steps: optimisation steps per image (15; 0 = the paper's "Diffusion Baseline").
        lr: Adam learning rate on the token embeddings (0.01).
        alpha: entropy weight (Table 2: 1). cluster_weight: CSC weight (1).
        num_views: augmented views per step (2). crop_scale / crop_ratio: random-resized-crop ranges (O10).
        t_min, t_max: adaptation timestep range (5, 300; Table 6). per_view_t: one t per view (O9 option).
        inference_t: timestep of the prediction (50; Table 7).
        image_size: side the image is squash-resized to (512 for SD 2.1-base, O11).
        attention_resolutions: latent-grid sides captured ((16,): Table 5). resolution_weights: per resolution in
            ascending order, ``None`` = equal (O4).
        map_size: side of the maps ("latent" = the latent grid, 64 at 512 px, as the paper; or an int such as 16,
            O2). query_upsampling: "nearest" or "bilinear" (O3).
        anchor_scale / anchor_offset / anchor_exclusive: soft anchors sigma(scale (M - offset)) (Table 3, O1); the
            clustering loss is taken per view with the view's own self-attention and averaged over views (O6).
        entropy_reduction: "mean" or "sum" over pixels (O7). detach_structure: stop gradients through A_self (O8).
        learn_tokens: "all" 77 rows or "class_only" (O13). final_resize: "nearest" label map or "bilinear" maps (O15).
        class_source: where each image's candidate classes come from (``oracle``, ``clip_filter``, ``all``; spec §8,
            O17); set through ``InvSeg(class_source=...)`` and recorded with the results.
        precision: UNet autocast on CUDA ("bf16", "fp16" or "fp32"; attention and losses stay fp32).
        early_exit: stop the UNet after the last captured block (spec §4).
    """

    steps: int = 15
    lr: float = 0.01
    alpha: float = 1.0
    cluster_weight: float = 1.0
    num_views: int = 2
    crop_scale: tuple[float, float] = (0.6, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    t_min: int = 5
    t_max: int = 300
    per_view_t: bool = False
    inference_t: int = 50
    image_size: int = 512
    attention_resolutions: tuple[int, ...] = (16,)
    resolution_weights: tuple[float, ...] | None = None
    map_size: int | str = "latent"
    query_upsampling: str = "nearest"
    anchor_scale: float = 4.0
    anchor_offset: float = 0.5
    anchor_exclusive: bool = False
    entropy_reduction: str = "mean"
    detach_structure: bool = False
    learn_tokens: str = "all"
    final_resize: str = "nearest"
    class_source: str = "oracle"
    precision: str = "bf16"
    early_exit: bool = True

    def __post_init__(self) -> None:
        self.crop_scale = tuple(self.crop_scale)  # type: ignore[assignment]
        self.crop_ratio = tuple(self.crop_ratio)  # type: ignore[assignment]
        self.attention_resolutions = tuple(int(r) for r in self.attention_resolutions)
        if self.resolution_weights is not None:
            self.resolution_weights = tuple(float(w) for w in self.resolution_weights)
        checks = [
            (self.steps >= 0, f"steps must be >= 0, got {self.steps}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.num_views >= 1, f"num_views must be >= 1, got {self.num_views}"),
            (0 <= self.t_min <= self.t_max, f"need 0 <= t_min <= t_max, got {self.t_min}, {self.t_max}"),
            (self.image_size % 8 == 0, f"image_size must be a multiple of 8 (VAE), got {self.image_size}"),
            (self.map_size == "latent" or (isinstance(self.map_size, int) and self.map_size > 0),
             f"map_size must be 'latent' or a positive int, got {self.map_size!r}"),
            (self.query_upsampling in QUERY_UPSAMPLING, f"query_upsampling must be one of {QUERY_UPSAMPLING}"),
            (self.entropy_reduction in ("mean", "sum"), "entropy_reduction must be 'mean' or 'sum'"),
            (self.learn_tokens in ("all", "class_only"), "learn_tokens must be 'all' or 'class_only'"),
            (self.final_resize in ("nearest", "bilinear"), "final_resize must be 'nearest' or 'bilinear'"),
            (self.class_source in CLASS_SOURCES, f"class_source must be one of {CLASS_SOURCES}"),
            (self.precision in _DTYPES, f"precision must be one of {tuple(_DTYPES)}"),
            (len(self.attention_resolutions) > 0, "attention_resolutions must not be empty"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"InvSeg config: {message}.")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> InvSegConfig:
        """Build from a config section, naming unknown keys."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown InvSeg option(s) {unknown}; valid: {sorted(known)}.")
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class InversionResult:
    """Outcome for one image.

    Attributes:
        maps: ``[C, L, L]`` class maps of the un-augmented image at ``inference_t`` (after adaptation).
        embeddings: ``[P, T, D]`` the learned token embeddings (``E0`` when ``steps = 0``).
        losses: total loss per step (before each update). cluster / entropy: their parts.
        seconds: wall time of the image (VAE, optimisation and prediction).
    """

    maps: Tensor
    embeddings: Tensor
    losses: list[float]
    cluster: list[float]
    entropy: list[float]
    seconds: float


class PromptInverter:
    """Runs InvSeg on single images with a frozen :class:`~ovs.methods.invseg.weights.DiffusionModel`."""

    def __init__(self, model: DiffusionModel, config: InvSegConfig) -> None:
        self.model = model
        self.config = config
        self.latent_size = config.image_size // 8
        self.map_size = self.latent_size if config.map_size == "latent" else int(config.map_size)
        self.capture = AttentionCapture(model.unet, self.latent_size, config.attention_resolutions,
                                        config.early_exit)
        for module in (model.unet, model.vae, model.text_encoder):
            module.requires_grad_(False)
            module.eval()

    @property
    def device(self) -> torch.device:
        return next(self.model.unet.parameters()).device

    def _autocast(self) -> AbstractContextManager[Any]:
        if self.device.type == "cuda" and self.config.precision != "fp32":
            return torch.autocast("cuda", dtype=_DTYPES[self.config.precision])
        return nullcontext()

    @torch.no_grad()
    def encode_text(self, prompts: PromptBatch) -> Tensor:
        """``E0 = tau(y)``: ``[P, T, D]`` fp32 (eq. 1's initial token embeddings)."""
        ids = prompts.input_ids.to(self.device)
        return self.model.text_encoder(ids).last_hidden_state.float()

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        """``[V, 3, S, S]`` in ``[0, 255]`` -> VAE latents ``[V, 4, S/8, S/8]`` (posterior mean x scale), fp32."""
        vae = self.model.vae
        dtype = next(vae.parameters()).dtype
        x = (images.to(self.device, torch.float32) / 127.5 - 1.0).to(dtype)
        with self._autocast():
            latents = vae.encode(x).latent_dist.mean
        return latents.float() * self.model.scaling_factor

    def add_noise(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """``z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps`` (the DDPM forward process of eq. 1)."""
        abar = self.model.alphas_cumprod.to(latents.device)[timesteps].view(-1, 1, 1, 1)
        return abar.sqrt() * latents + (1 - abar).sqrt() * noise

    def maps(self, latents: Tensor, timesteps: Tensor, embeddings: Tensor, prompts: PromptBatch,
             ) -> tuple[Tensor, Tensor]:
        """Self-attention ``[V, N, N]`` (mean over prompts) and class maps ``[V, N, C]`` of ``V`` noisy latents.

        Every prompt ``p`` is a batch row per view (rows ordered view-major); categories of all prompts are
        concatenated (spec §6).
        """
        v, p = latents.shape[0], embeddings.shape[0]
        unet_dtype = next(self.model.unet.parameters()).dtype
        rows = latents.repeat_interleave(p, dim=0).to(unet_dtype)  # [V*P, 4, L, L]
        text = embeddings.repeat(v, 1, 1).to(unet_dtype)  # [V*P, T, D]
        with self._autocast():
            captured = self.capture(rows, timesteps.repeat_interleave(p), text)
        config = self.config
        weights = config.resolution_weights
        a_self = aggregate(captured.self_maps, self.map_size, weights, "self", config.query_upsampling)
        a_cross = aggregate(captured.cross_maps, self.map_size, weights, "cross")
        token_weights = prompts.token_weights.to(a_cross.device).repeat(v, 1, 1)  # [V*P, T, C]
        per_prompt = class_maps(a_self, a_cross, token_weights)  # [V*P, N, C], zero outside a prompt's categories
        c = per_prompt.shape[-1]
        owned = (prompts.token_weights.sum(dim=1) > 0).to(per_prompt.dtype).to(per_prompt.device)  # [P, C]
        w = (per_prompt.view(v, p, -1, c) * owned[None, :, None]).sum(dim=1)  # [V, N, C]
        a_self = a_self.view(v, p, *a_self.shape[1:]).mean(dim=1)  # [V, N, N]
        return a_self, w

    def invert(self, image: Tensor, prompts: PromptBatch, generator: torch.Generator) -> InversionResult:
        """InvSeg on one image ``[3, H, W]`` in ``[0, 255]`` (any size; squash-resized to ``image_size``, O11)."""
        config = self.config
        start = time.perf_counter()
        size = config.image_size
        image = F.interpolate(image[None].float(), size=(size, size), mode="bilinear", align_corners=False,
                              antialias=True)[0].clamp(0, 255)
        e0 = self.encode_text(prompts)  # [P, T, D]
        losses: list[float] = []
        cluster_values: list[float] = []
        entropy_values: list[float] = []
        learned = e0
        if config.steps > 0:
            boxes = sample_crop_boxes(size, config.num_views, config.crop_scale, config.crop_ratio, generator)
            view_latents = self.encode_images(crop_views(image, boxes))  # [V, 4, L, L], once per image
            parameter = e0.clone().requires_grad_(True)
            mask = None
            if config.learn_tokens == "class_only":
                mask = prompts.class_token_mask.to(e0.device)[..., None]  # [P, T, 1]
            optimiser = torch.optim.Adam([parameter], lr=config.lr)
            with torch.enable_grad():
                for _ in range(config.steps):
                    embeddings = parameter if mask is None else torch.where(mask, parameter, e0)
                    total, cluster, entropy = self._loss(view_latents, boxes, embeddings, prompts, generator)
                    optimiser.zero_grad(set_to_none=True)
                    total.backward()
                    optimiser.step()
                    losses.append(total.item())
                    cluster_values.append(cluster.item())
                    entropy_values.append(entropy.item())
            learned = (parameter if mask is None else torch.where(mask, parameter, e0)).detach()
        with torch.no_grad():
            latents = self.encode_images(image[None])  # [1, 4, L, L]
            noise = torch.randn(latents.shape, generator=generator).to(latents.device)
            t = torch.tensor([config.inference_t], device=latents.device)
            _, w = self.maps(self.add_noise(latents, noise, t), t, learned, prompts)
        grid = self.map_size
        maps = w[0].T.reshape(-1, grid, grid)  # [C, L, L]
        return InversionResult(maps, learned, losses, cluster_values, entropy_values, time.perf_counter() - start)

    def _loss(self, view_latents: Tensor, boxes: list[CropBox], embeddings: Tensor, prompts: PromptBatch,
              generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """``L = w_c * mean_v L_Cluster,v + alpha * L_Etrp`` for one step (eq. 8, entropy; spec O6, O9)."""
        config = self.config
        v = view_latents.shape[0]
        t_count = v if config.per_view_t else 1
        t = torch.randint(config.t_min, config.t_max + 1, (t_count,), generator=generator).expand(v)
        noise = torch.randn(view_latents.shape, generator=generator)
        device = view_latents.device
        t, noise = t.to(device), noise.to(device)
        a_self, w = self.maps(self.add_noise(view_latents, noise, t), t, embeddings, prompts)
        structure = a_self.detach() if config.detach_structure else a_self
        cluster = clustering_loss(structure, w, config.anchor_scale, config.anchor_offset,
                                  config.anchor_exclusive).mean()
        grid = self.map_size
        view_maps = w.transpose(1, 2).reshape(v, -1, grid, grid)  # [V, C, L, L]
        mean_maps, valid = paste_views(view_maps, boxes, config.image_size)
        entropy = entropy_loss(mean_maps, valid, config.entropy_reduction)
        return config.cluster_weight * cluster + config.alpha * entropy, cluster, entropy
