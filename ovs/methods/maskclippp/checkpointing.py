"""Checkpoints of MaskCLIP++: only the trained tensors (the pretrained CLIP is rebuilt from its tag), exact resume of
the data order, and export of the fine-tuned CLIP (spec §2.3 "Checkpoints contain only ...").

:class:`MaskCLIPPPCheckpointing` is a mixin of :class:`ovs.methods.maskclippp.MaskCLIPPP`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from open_clip.transformer import QuickGELU
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class MaskCLIPPPCheckpointing:
    """State-dict selection, RNG state in checkpoints and CLIP export."""

    def _trainable_parameters(self) -> Iterator[tuple[str, nn.Module, str, nn.Parameter]]:
        """``(full name, owning module, local name, parameter)`` of every trainable parameter, each once."""
        seen: set[int] = set()
        for module_name, module in self.named_modules():
            for parameter_name, parameter in module.named_parameters(recurse=False):
                if parameter.requires_grad and id(parameter) not in seen:
                    seen.add(id(parameter))
                    yield f"{module_name}.{parameter_name}".lstrip("."), module, parameter_name, parameter

    def trained_state_keys(self) -> list[str]:
        """State-dict keys a checkpoint holds: trainable parameters and the running statistics of trained
        BatchNorm layers (ResNet ``all``)."""
        keys = [name for name, _, _, _ in self._trainable_parameters()]
        seen: set[int] = set()
        for module_name, module in self.named_modules():
            if isinstance(module, _BatchNorm) and any(p.requires_grad for p in module.parameters()):
                for buffer_name, buffer in module.named_buffers(recurse=False):
                    if id(buffer) not in seen:
                        seen.add(id(buffer))
                        keys.append(f"{module_name}.{buffer_name}")
        return keys

    def checkpoint_state_keys(self) -> list[str]:
        """State-dict keys written to checkpoints: the trained tensors when the pretrained CLIP can be rebuilt from
        its weights, every tensor once (no aliases) for a randomly initialised CLIP (``pretrained: null``)."""
        if self.hparams.pretrained is not None:
            return self.trained_state_keys()
        seen: set[int] = set()
        keys = []
        for name, tensor in self.state_dict(keep_vars=True).items():
            if id(tensor) not in seen:
                seen.add(id(tensor))
                keys.append(name)
        return keys

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only :meth:`checkpoint_state_keys` (small checkpoints) and the global torch RNG state (data order)."""
        keys = set(self.checkpoint_state_keys())
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keys}
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
        checkpoint["maskclippp_rng"] = rng

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load a full state dict, or what MaskCLIP++ checkpoints hold (:meth:`checkpoint_state_keys`).

        A partial dict must hold at least those keys when ``strict``, and only keys of this model (a converted
        release, ``tools/convert_maskclippp.py``, also holds the frozen tensors the authors trained by accident, spec
        Q5); the other tensors keep the pretrained CLIP weights the model was built with (aliases of a tensor share
        its storage and follow it).
        """
        own = set(self.state_dict())
        if set(state_dict) == own:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        expected, found = set(self.checkpoint_state_keys()), set(state_dict)
        if strict and (expected - found or found - own):
            missing, unexpected = sorted(expected - found), sorted(found - own)
            raise ValueError(
                f"MaskCLIP++ checkpoint does not match this configuration: {len(missing)} tensors missing "
                f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}). Build the model with "
                "the checkpoint's hyper-parameters (MaskCLIPPP.load_from_checkpoint) or a matching config."
            )
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        return type(result)(sorted(expected - found), result.unexpected_keys)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """When resuming a fit, restore the global torch RNG state (sampler shuffling and augmentations continue as
        if uninterrupted; model-side randomness is already a function of the step, see :meth:`_step_rng`)."""
        rng = checkpoint.get("maskclippp_rng")
        if rng is not None and self._trainer is not None and self._trainer.state.fn == "fit":
            torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and torch.cuda.is_available() and torch.cuda.device_count() == len(rng["cuda"]):
                torch.cuda.set_rng_state_all(list(rng["cuda"]))

    def export_clip(self, path: str | Path) -> Path:
        """Write the full CLIP (fine-tuned visual tower, and text tower if trained) as an ovs checkpoint.

        ``create_clip(model_name, pretrained=path)`` loads it, so every training-free method can run on the
        fine-tuned encoder.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "model_name": self.hparams.model_name,
            "base_pretrained": self.hparams.pretrained,
            "source": "maskclippp",
            "quick_gelu": any(isinstance(m, QuickGELU) for m in self.clip.model.modules()),
            "mean": [float(v) / 255.0 for v in self.clip.pixel_mean.flatten()],
            "std": [float(v) / 255.0 for v in self.clip.pixel_std.flatten()],
        }
        state = {k: v.detach().cpu().clone() for k, v in self.clip.model.state_dict().items()}
        torch.save({"state_dict": state, "ovs_meta": meta}, path)
        return path
