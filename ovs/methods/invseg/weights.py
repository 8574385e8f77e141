"""Stable Diffusion components for InvSeg: load SD 2.1-base offline (spec §3, O14) or build the tiny test model.

``pretrained`` is a local diffusers folder (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``)
or a Hugging Face repo id looked up in the local hub cache only. Nothing is downloaded; a missing model raises one
error naming every folder searched and the command that fills the cache on a machine with internet.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

DEFAULT_REPO = "stabilityai/stable-diffusion-2-1-base"
SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
DIFFUSION_EXTRA_HINT = (
    "InvSeg needs the optional diffusers stack: `make install-diffusion` (or "
    "`pip install -c requirements/constraints-ci.txt -e '.[diffusion]'`, Python >= 3.11)."
)


@dataclass
class DiffusionModel:
    """Frozen Stable Diffusion parts InvSeg uses (the UNet decoder half after the captured layers is never run)."""

    tokenizer: Any
    text_encoder: nn.Module
    unet: nn.Module
    vae: nn.Module
    alphas_cumprod: torch.Tensor  # [T_train] of the noise schedule (add_noise)
    scaling_factor: float  # VAE latent scale (0.18215 for SD 2.1)
    source: str


def require_diffusers() -> None:
    """Raise ``ImportError`` with the install command when diffusers / transformers are missing."""
    try:
        import diffusers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as err:
        raise ImportError(f"{err}. {DIFFUSION_EXTRA_HINT}") from err


def hub_cache_dirs(cache_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Hub caches searched, in order: ``cache_dir``, ``$HF_HUB_CACHE``, ``$HF_HOME/hub``,
    ``~/.cache/huggingface/hub``."""
    candidates = [cache_dir, os.environ.get("HF_HUB_CACHE"),
                  os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else None,
                  os.path.join("~", ".cache", "huggingface", "hub")]
    seen: list[Path] = []
    for c in candidates:
        if c and Path(c).expanduser() not in seen:
            seen.append(Path(c).expanduser())
    return seen


def _is_diffusers_folder(path: Path) -> bool:
    return all((path / sub).is_dir() for sub in SUBFOLDERS)


def find_stable_diffusion(pretrained: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The local diffusers folder of ``pretrained`` (a folder, or a repo id in a hub cache's ``snapshots/``).

    Raises:
        FileNotFoundError: naming the folders searched and the download command.
    """
    searched: list[Path] = []
    path = Path(pretrained).expanduser()
    if path.is_dir():
        if _is_diffusers_folder(path):
            return path
        searched.append(path)
    if "/" in pretrained and not path.is_dir():
        repo_dir = "models--" + pretrained.replace("/", "--")
        for cache in hub_cache_dirs(cache_dir):
            snapshots = cache / repo_dir / "snapshots"
            searched.append(snapshots)
            ref = cache / repo_dir / "refs" / "main"
            preferred = [snapshots / ref.read_text().strip()] if ref.is_file() else []
            others = sorted(snapshots.glob("*"), key=lambda p: p.stat().st_mtime, reverse=True)
            for snapshot in preferred + others:
                if _is_diffusers_folder(snapshot):
                    return snapshot
    repo = pretrained if "/" in pretrained and not path.is_dir() else DEFAULT_REPO
    raise FileNotFoundError(
        f"Stable Diffusion weights '{pretrained}' not found (ovs never downloads). Searched: "
        f"{', '.join(str(s) for s in searched) or pretrained}; a folder needs "
        f"{', '.join(s + '/' for s in SUBFOLDERS)}. "
        f"On a machine with internet run `hf download {repo} --exclude '*.ckpt' '*.bin'` (huggingface_hub >= 1.0; "
        f"older: `huggingface-cli download {repo}`) and copy the hub cache here (or set HF_HUB_CACHE), or pass the "
        "snapshot folder as model.init_args.pretrained."
    )


def load_stable_diffusion(pretrained: str = DEFAULT_REPO, cache_dir: str | os.PathLike[str] | None = None,
                          dtype: torch.dtype = torch.float32) -> DiffusionModel:
    """Load tokenizer, text encoder, UNet, VAE and the noise schedule from the local folder of ``pretrained``."""
    require_diffusers()
    folder = find_stable_diffusion(pretrained, cache_dir)
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    common: dict[str, Any] = {"local_files_only": True}
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype, **common)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype, **common)
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", torch_dtype=dtype, **common)
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", **common)
    scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler", **common)
    return DiffusionModel(tokenizer, text_encoder, unet, vae, scheduler.alphas_cumprod.float(),
                          float(vae.config.scaling_factor), str(folder))
