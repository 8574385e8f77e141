"""InvSeg: test-time prompt inversion on Stable Diffusion 2.1 for open-vocabulary segmentation (spec invseg.md).

Needs the optional ``diffusion`` extra (diffusers, transformers; ``make install-diffusion``) only when a model is
built: importing this package does not import diffusers.
"""

from ovs.methods.invseg.filtering import CLASS_SOURCES, ClassFilter
from ovs.methods.invseg.inversion import InversionResult, InvSegConfig, PromptInverter
from ovs.methods.invseg.module import InvSeg
from ovs.methods.invseg.prompt import PromptBatch, build_prompts
from ovs.methods.invseg.weights import DEFAULT_REPO, DiffusionModel, find_stable_diffusion, load_stable_diffusion

__all__ = [
    "CLASS_SOURCES",
    "ClassFilter",
    "DEFAULT_REPO",
    "DiffusionModel",
    "InvSeg",
    "InvSegConfig",
    "InversionResult",
    "PromptBatch",
    "PromptInverter",
    "build_prompts",
    "find_stable_diffusion",
    "load_stable_diffusion",
]
