"""One entry point for CLIP models: :func:`create_clip` (open_clip factory style, configs as data).

Weights come from (in this order): a local checkpoint file, the local Hugging Face / open_clip cache for a pretrained
tag (never the network), or random initialisation (``pretrained=None``, for tests). QuickGELU follows the pretrained
tag (OpenAI, MetaCLIP), as open_clip does, and can be forced. When weights cannot be found offline,
:class:`WeightsNotFoundError` names the model, the tag, every place that was searched and how to provide the file.
"""

from __future__ import annotations

import logging
import os
import zipfile
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.modified_resnet import ModifiedResNet
from open_clip.pretrained import get_pretrained_cfg
from open_clip.timm_model import TimmModel
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn

from ovs.backbones.cnn import CLIPConvNeXt, CLIPResNet
from ovs.backbones.eva import CLIPEva, is_eva_tower
from ovs.backbones.vit import CLIPViT

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pt")

_registered_configs = False


def register_model_configs() -> None:
    """Make model configs known to open_clip, once: ovs's own (``ovs/backbones/model_configs/*.json``) and every
    directory listed in ``$OVS_MODEL_CONFIG_PATH`` (``os.pathsep``-separated; for your own architectures)."""
    global _registered_configs
    if not _registered_configs:
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        for extra in filter(None, os.environ.get("OVS_MODEL_CONFIG_PATH", "").split(os.pathsep)):
            if not Path(extra).is_dir():
                raise FileNotFoundError(f"OVS_MODEL_CONFIG_PATH entry {extra} is not a directory of open_clip JSONs.")
            open_clip.add_model_config(extra)
        _registered_configs = True


@contextmanager
def _random_init_is_intended() -> Iterator[None]:
    """Silence open_clip's 'initialized randomly' warning: ovs loads weights itself, after creation."""

    def drop(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


class WeightsNotFoundError(FileNotFoundError):
    """Raised when CLIP weights are not available offline."""


def _hf_cache_dirs(cache_dir: str | None) -> list[Path]:
    dirs = [Path(cache_dir)] if cache_dir else []
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    dirs.append(Path(os.environ.get("HF_HUB_CACHE", hf_home / "hub")))
    return dirs


def _find_in_hf_cache(repo_and_file: str, cache_dirs: list[Path]) -> tuple[Path | None, list[str]]:
    """Look up an ``org/repo/[file]`` entry in Hugging Face caches without any network access."""
    from huggingface_hub import try_to_load_from_cache

    if repo_and_file.endswith("/"):  # open_clip convention: 'org/repo/' means the default weight file names
        repo_id, filename = repo_and_file.rstrip("/"), ""
    else:
        repo_id, filename = os.path.split(repo_and_file)
    candidates = [filename] if filename else list(HF_WEIGHT_FILES)
    searched = []
    for cache in cache_dirs:
        for name in candidates:
            searched.append(f"{cache}/models--{repo_id.replace('/', '--')}/snapshots/*/{name}")
            found = try_to_load_from_cache(repo_id, name, cache_dir=str(cache))
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found), searched
    return None, searched


def resolve_pretrained(model_name: str, pretrained: str, cache_dir: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Map ``pretrained`` (a file path or an open_clip tag) to a local weights file, offline.

    Returns:
        The file and the tag's open_clip config (empty for a plain file).

    Raises:
        WeightsNotFoundError: with the model, the tag, the searched locations and how to provide the file.
    """
    path = Path(pretrained).expanduser()
    if path.is_file():
        return path, {}
    cfg = get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        known = open_clip.list_pretrained_tags_by_model(model_name)
        raise WeightsNotFoundError(
            f"'{pretrained}' is neither an existing file nor a pretrained tag of open_clip model '{model_name}'. "
            f"Known tags: {known or 'none'}. Pass a checkpoint path or one of these tags."
        )
    searched: list[str] = []
    if cfg.get("hf_hub"):
        found, searched = _find_in_hf_cache(cfg["hf_hub"], _hf_cache_dirs(cache_dir))
        if found:
            return found, cfg
    if cfg.get("url"):
        url_dir = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "clip"
        candidate = url_dir / os.path.basename(cfg["url"])
        searched.append(str(candidate))
        if candidate.is_file():
            return candidate, cfg
    source = f"https://huggingface.co/{cfg['hf_hub'].rstrip('/')}" if cfg.get("hf_hub") else cfg.get("url", "?")
    raise WeightsNotFoundError(
        f"No offline weights for open_clip model '{model_name}' with pretrained tag '{pretrained}'.\n"
        "Searched:\n  " + "\n  ".join(searched) + "\n"
        f"Fix: on a machine with internet run `python -c \"import open_clip; open_clip.create_model('{model_name}', "
        f"pretrained='{pretrained}')\"` to fill the Hugging Face cache (then copy ~/.cache/huggingface to this "
        f"machine), or download the weights from {source} and pass the file path as `pretrained`."
    )


def load_state_dict_file(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a CLIP state dict from safetensors, a torch file, an OpenAI TorchScript archive or an ovs checkpoint.

    ovs checkpoints are dicts ``{"state_dict": ..., "ovs_meta": {...}}``; a pruned token embedding
    (``"pruned_token_embedding": {"ids", "rows", "num_embeddings"}``) is expanded back to the full table with zero
    rows for the tokens the model never saw.

    Returns:
        The state dict (open_clip key layout) and the ovs metadata (empty for foreign files).
    """
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path)), {}
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            is_torchscript = any(name.endswith("constants.pkl") for name in archive.namelist())
        if is_torchscript:
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
            return {k: v for k, v in state.items() if k not in ("input_resolution", "context_length", "vocab_size")}, {}
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    meta: dict[str, Any] = {}
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        meta = dict(checkpoint.get("ovs_meta", {}))
        pruned = checkpoint.get("pruned_token_embedding")
        checkpoint = dict(checkpoint["state_dict"])
        if pruned is not None:
            table = torch.zeros(pruned["num_embeddings"], pruned["rows"].shape[1], dtype=pruned["rows"].dtype)
            table[pruned["ids"]] = pruned["rows"]
            checkpoint["token_embedding.weight"] = table
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(checkpoint).__name__}).")
    if next(iter(checkpoint)).startswith("module."):
        checkpoint = {k.removeprefix("module."): v for k, v in checkpoint.items()}
    return checkpoint, meta


class CLIP(nn.Module):
    """An open_clip model with ovs's dense view of its vision tower, its tokenizer and its normalisation.

    Attributes:
        model: the open_clip model (``encode_text`` / ``encode_image`` as usual).
        dense: :class:`CLIPViT`, :class:`CLIPEva`, :class:`CLIPConvNeXt` or :class:`CLIPResNet`.
        architecture: ``"vit"``, ``"eva"``, ``"convnext"`` or ``"resnet"``.
        model_name, pretrained: how it was created (for caches and checkpoints).
    """

    def __init__(
        self,
        model: nn.Module,
        model_name: str,
        pretrained: str | None,
        mean: tuple[float, ...] = OPENAI_MEAN,
        std: tuple[float, ...] = OPENAI_STD,
    ) -> None:
        super().__init__()
        self.model = model
        self.model_name = model_name
        self.pretrained = pretrained
        visual = model.visual
        if isinstance(visual, VisionTransformer):
            self.dense: CLIPViT | CLIPEva | CLIPConvNeXt | CLIPResNet = CLIPViT(visual)
            self.architecture = "vit"
        elif is_eva_tower(visual):
            self.dense = CLIPEva(visual)
            self.architecture = "eva"
        elif isinstance(visual, TimmModel):
            self.dense = CLIPConvNeXt(visual)
            self.architecture = "convnext"
        elif isinstance(visual, ModifiedResNet):
            self.dense = CLIPResNet(visual)
            self.architecture = "resnet"
        else:
            raise NotImplementedError(f"No dense view for vision tower {type(visual).__name__} of '{model_name}'.")
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.weights_fingerprint = ""
        self.loaded_text_versions = self.text_versions()
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1) * 255.0, persistent=False)

    @property
    def embed_dim(self) -> int:
        return self.dense.output_dim

    @property
    def identity(self) -> str:
        """A stable name for caches: model name and weights source (file size and mtime included)."""
        return f"{self.model_name}@{self.pretrained or 'random'}{self.weights_fingerprint}"

    def text_versions(self) -> tuple[int, ...]:
        """In-place update counters of the text tower's parameters (they change when it is trained)."""
        return tuple(p._version for name, p in self.model.named_parameters() if not name.startswith("visual."))

    @property
    def text_tower_unchanged(self) -> bool:
        """True while the text tower still holds the weights it was loaded with."""
        return self.text_versions() == self.loaded_text_versions

    def normalize(self, images: Tensor) -> Tensor:
        """RGB images in ``[0, 255]`` (uint8 or float), ``[B, 3, H, W]`` -> CLIP-normalised float."""
        return (images.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std

    def encode_text(self, texts: list[str], batch_size: int = 512) -> Tensor:
        """L2-normalised text embeddings ``[N, D]``, encoded in chunks of ``batch_size``."""
        device = self.pixel_mean.device
        chunks = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[start:start + batch_size]).to(device)
            chunks.append(nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1))
        return torch.cat(chunks)

    def encode_image(self, images: Tensor) -> Tensor:
        """L2-normalised global image embeddings of ``[0, 255]`` images, ``[B, D]``."""
        return nn.functional.normalize(self.model.encode_image(self.normalize(images)).float(), dim=-1)


def create_clip(
    model_name: str,
    pretrained: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | None = None,
    force_quick_gelu: bool | None = None,
    device: str | torch.device = "cpu",
    strict: bool = True,
) -> CLIP:
    """Create an open_clip model by name with offline weights (the single model entry point of ovs).

    Args:
        model_name: an open_clip model name (``ViT-B-16``, ``convnext_base_w_320``, ``RN50x16``, ``ovs-toy-vit``...).
        pretrained: ``None`` (random init), an open_clip tag (looked up in the local caches only) or a file: an
            open_clip/OpenAI checkpoint, safetensors, or an ovs checkpoint (e.g. a MaskCLIP++ export).
        cache_dir: extra cache directory searched first for tags.
        force_quick_gelu: ``True``/``False`` override; ``None`` follows the tag (OpenAI and MetaCLIP use QuickGELU).
        device: where to put the model.
        strict: require every key of the model in the checkpoint.

    Raises:
        WeightsNotFoundError: when a tag's weights are not cached or the file does not exist.
    """
    register_model_configs()
    if model_name not in open_clip.list_models():
        raise ValueError(
            f"Unknown open_clip model '{model_name}'. Use one of open_clip.list_models() or add a JSON config to "
            f"{MODEL_CONFIG_DIR}."
        )
    tag_cfg: dict[str, Any] = {}
    weights: Path | None = None
    if pretrained is not None:
        weights, tag_cfg = resolve_pretrained(model_name, str(pretrained), cache_dir)
    quick_gelu = force_quick_gelu if force_quick_gelu is not None else bool(tag_cfg.get("quick_gelu", False))
    with _random_init_is_intended():
        model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=quick_gelu)
    mean, std = tag_cfg.get("mean", OPENAI_MEAN), tag_cfg.get("std", OPENAI_STD)
    if weights is not None:
        state, meta = load_state_dict_file(weights)
        if meta.get("quick_gelu") is not None and force_quick_gelu is None and meta["quick_gelu"] != quick_gelu:
            with _random_init_is_intended():
                model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=meta["quick_gelu"])
        state = open_clip.factory.convert_state_dict(model, state)
        open_clip.factory.resize_pos_embed(state, model)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if strict and (missing or unexpected):
            raise ValueError(
                f"Checkpoint {weights} does not match open_clip model '{model_name}': "
                f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. "
                f"{unexpected[:3]}). Check the model name, or pass strict=False for partial (e.g. visual-only) files."
            )
        mean, std = meta.get("mean", mean), meta.get("std", std)
    model.eval()
    clip = CLIP(model, model_name, None if pretrained is None else str(pretrained), tuple(mean), tuple(std))
    if weights is not None:
        stat = weights.stat()
        clip.weights_fingerprint = f":{stat.st_size}:{stat.st_mtime_ns}"
    return clip.to(device)
