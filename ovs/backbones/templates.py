"""Prompt templates used by the methods in ovs (training-free spec §1.2, MaskCLIP++ spec §6.1).

Each set is a tuple of format strings with one ``{}`` for the class name. Strings are kept byte-exact: several FC-CLIP
templates have no trailing period, and SCLIP's text features are reproduced bit-exactly only with open_clip's order.
"""

from __future__ import annotations

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

#: The 80 OpenAI ImageNet templates, in open_clip's order (SCLIP, NACLIP, ClearCLIP).
OPENAI_80: tuple[str, ...] = tuple(template("{}") for template in OPENAI_IMAGENET_TEMPLATES)

#: MaskCLIP / CLIP Surgery: the 80 templates plus 5 scene templates (training-free spec §1.2).
MASKCLIP_85: tuple[str, ...] = OPENAI_80 + (
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "this is the {} in the scene.",
    "this is one {} in the scene.",
)

#: FC-CLIP's 14 ViLD-style templates used by MaskCLIP++ (``t14``, MaskCLIP++ spec §6.1).
FCCLIP_14: tuple[str, ...] = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)

#: The single template of GEM and MaskCLIP++ ``t1``.
SINGLE: tuple[str, ...] = ("a photo of a {}.",)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "openai80": OPENAI_80,
    "maskclip85": MASKCLIP_85,
    "fcclip14": FCCLIP_14,
    "single": SINGLE,
}


def get_templates(name_or_list: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Resolve a template-set name (``openai80``, ``maskclip85``, ``fcclip14``, ``single``) or pass a list through."""
    if isinstance(name_or_list, str):
        if name_or_list not in TEMPLATE_SETS:
            raise ValueError(
                f"Unknown template set {name_or_list!r}; choose one of {sorted(TEMPLATE_SETS)} "
                "or pass a list of strings containing '{}'."
            )
        return TEMPLATE_SETS[name_or_list]
    templates = tuple(name_or_list)
    bad = [t for t in templates if "{}" not in t]
    if not templates or bad:
        raise ValueError(f"Every template must contain '{{}}' for the class name; got {bad or 'an empty list'}.")
    return templates
