"""A tiny random Stable-Diffusion-shaped model for tests and the synthetic benchmark (offline, from configs).

UNet with two cross-attention down blocks (cross-attention dim 32), a four-block ``AutoencoderKL`` (x8
downsampling), a 2-layer ``CLIPTextModel`` and the real CLIP BPE tokenizer written from open_clip's bundled
``bpe_simple_vocab_16e6.txt.gz`` (``model_max_length`` 77, the SD 2.x pad token "!"), so prompts tokenise exactly as
SD 2.1's. The SD 2.1 noise schedule (scaled-linear betas 0.00085-0.012, 1000 steps) and VAE scale 0.18215.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import torch

from ovs.methods.invseg.weights import DiffusionModel, require_diffusers

TINY_UNET: dict[str, Any] = {
    "block_out_channels": (16, 32, 32),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "norm_num_groups": 8,
    "layers_per_block": 1,
    "in_channels": 4,
    "out_channels": 4,
    "sample_size": 16,
}
TINY_VAE: dict[str, Any] = {
    "block_out_channels": (8, 8, 16, 16),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "norm_num_groups": 4,
    "layers_per_block": 1,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "sample_size": 128,
    "scaling_factor": 0.18215,
}
TINY_TEXT: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
}


def clip_bpe_tokenizer(model_max_length: int = 77, pad_token: str = "!") -> Any:
    """The CLIP BPE tokenizer (49,408 tokens, ids identical to open_clip's) without the model hub."""
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(path).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={token: i for i, token in enumerate(vocab)}, merges=merges, pad_token=pad_token,
                         model_max_length=model_max_length)


def build_tiny_diffusion(seed: int = 0, unet: dict[str, Any] | None = None, vae: dict[str, Any] | None = None,
                         text_encoder: dict[str, Any] | None = None) -> DiffusionModel:
    """Random tiny SD parts; ``unet`` / ``vae`` / ``text_encoder`` override entries of ``TINY_UNET`` / ``TINY_VAE`` /
    ``TINY_TEXT`` (the config's ``tiny`` section). Deterministic in ``seed``."""
    require_diffusers()
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = clip_bpe_tokenizer()
    text_config = {**TINY_TEXT, **(text_encoder or {})}
    unet_config = {**TINY_UNET, **(unet or {})}
    vae_config = {**TINY_VAE, **(vae or {})}
    if unet_config["cross_attention_dim"] != text_config["hidden_size"]:
        raise ValueError(f"tiny.unet.cross_attention_dim ({unet_config['cross_attention_dim']}) must equal "
                         f"tiny.text_encoder.hidden_size ({text_config['hidden_size']}).")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                            **text_config))
        unet_model = UNet2DConditionModel(**unet_config)
        vae_model = AutoencoderKL(**vae_config)
    finally:
        torch.random.set_rng_state(generator_state)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear")
    return DiffusionModel(tokenizer, text.eval(), unet_model.eval(), vae_model.eval(),
                          scheduler.alphas_cumprod.float(), float(vae_config["scaling_factor"]), f"tiny(seed={seed})")
