"""Evaluation presets by short name (``tools/eval.py --datasets ade150,pc59``).

Each preset names the DataModule and, per protocol, the class-name file and mIoU convention its reference used:

* ``"maskclippp"``: FC-CLIP-style names, detectron2 mIoU (classes absent from GT excluded; maskclippp.md §9.1);
* ``"training_free"``: SCLIP names, mmseg mIoU (NaN where union is 0, nanmean; training-free.md §9.6, §10).

A protocol missing from a preset means its reference never evaluated that dataset (e.g. PC-60 has no MaskCLIP++
numbers); asking for it raises an error listing the available ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ovs.data.ade20k import ADE20KDataModule
from ovs.data.cityscapes import CityscapesDataModule
from ovs.data.coco import COCOObjectDataModule, COCOPanopticDataModule, COCOStuffDataModule
from ovs.data.datamodule import SegDataModule
from ovs.data.pascal import PascalContextDataModule, PascalVOCDataModule

PROTOCOLS = ("maskclippp", "training_free")
LOADER_OPTIONS = ("num_workers", "eval_batch_size")
"""Loader settings of a config's data section that ``tools/eval.py --datasets`` passes to every preset."""


@dataclass(frozen=True)
class Protocol:
    """Vocabulary file and mIoU convention of one reference protocol."""

    class_names: str
    miou_convention: str


@dataclass(frozen=True)
class EvalPreset:
    """A benchmark: its DataModule class and constructor arguments, background index and protocols."""

    name: str
    datamodule: type[SegDataModule]
    kwargs: dict[str, Any] = field(default_factory=dict)
    background_index: int | None = None
    protocols: dict[str, Protocol] = field(default_factory=dict)
    tasks: tuple[str, ...] = ("semantic",)
    """Annotation tasks the DataModule reads: ``"panoptic"`` adds masks, segments and ``pan_seg`` to ``sem_seg``."""

    @property
    def default_protocol(self) -> str:
        """``"maskclippp"`` when the preset has it, else ``"training_free"``."""
        return next(p for p in PROTOCOLS if p in self.protocols)


def _both(maskclippp: str, training_free: str) -> dict[str, Protocol]:
    return {
        "maskclippp": Protocol(maskclippp, "detectron2"),
        "training_free": Protocol(training_free, "mmseg"),
    }


EVAL_PRESETS: dict[str, EvalPreset] = {
    preset.name: preset
    for preset in [
        EvalPreset("ade150", ADE20KDataModule, {"variant": "150"}, None, _both("ade150", "sclip_ade20k"),
                   ("semantic", "panoptic", "instance")),
        EvalPreset("ade847", ADE20KDataModule, {"variant": "847"}, None,
                   {"maskclippp": Protocol("ade847", "detectron2")}),
        EvalPreset("pc59", PascalContextDataModule, {"variant": "59"}, None, _both("pc59", "sclip_context59")),
        EvalPreset("pc60", PascalContextDataModule, {"variant": "60"}, 0,
                   {"training_free": Protocol("sclip_context60", "mmseg")}),
        EvalPreset("pc459", PascalContextDataModule, {"variant": "459"}, None,
                   {"maskclippp": Protocol("pc459", "detectron2")}),
        EvalPreset("voc20", PascalVOCDataModule, {"variant": "20"}, None, _both("voc20", "sclip_voc20")),
        EvalPreset("voc21", PascalVOCDataModule, {"variant": "21"}, 0, _both("voc21", "sclip_voc21")),
        EvalPreset("coco_stuff", COCOStuffDataModule, {}, None, _both("coco_stuff", "sclip_coco_stuff")),
        EvalPreset("coco_object", COCOObjectDataModule, {}, 0,
                   {"training_free": Protocol("sclip_coco_object", "mmseg")}),
        EvalPreset("coco_panoptic", COCOPanopticDataModule, {}, None,
                   {"maskclippp": Protocol("coco_panoptic", "detectron2")}),
        EvalPreset("cityscapes", CityscapesDataModule, {}, None, _both("cityscapes", "sclip_city_scapes")),
    ]
}  # fmt: skip


def get_eval_preset(name: str) -> EvalPreset:
    """The preset called ``name``; unknown names raise ``KeyError`` listing the valid ones."""
    if name not in EVAL_PRESETS:
        raise KeyError(f"Unknown evaluation dataset {name!r}; choose from {', '.join(EVAL_PRESETS)}.")
    return EVAL_PRESETS[name]


def resolve_protocol(name: str, protocol: str | None = None) -> tuple[str, Protocol]:
    """The protocol name (``None``: the preset's default) and its vocabulary / mIoU convention for dataset ``name``."""
    preset = get_eval_preset(name)
    protocol = protocol or preset.default_protocol
    if protocol not in preset.protocols:
        raise ValueError(
            f"Dataset {name!r} has no {protocol!r} protocol; available: {', '.join(preset.protocols)}."
        )
    return protocol, preset.protocols[protocol]


def loader_options(data_args: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`LOADER_OPTIONS` set (not ``None``) in a data section's ``init_args``."""
    return {key: data_args[key] for key in LOADER_OPTIONS if data_args.get(key) is not None}


def build_eval_datamodule(name: str, protocol: str | None = None, prefer_task: str = "semantic",
                          **kwargs: Any) -> SegDataModule:
    """DataModule of benchmark ``name`` with the class names and mIoU convention of ``protocol``.

    ``protocol`` defaults to ``"maskclippp"`` where the preset has it, else ``"training_free"``. ``prefer_task`` is
    the annotation a model can use (``"panoptic"`` for MaskCLIP++ with a generator and PQ / AP on): taken where the
    preset has it, semantic elsewhere, so one ``--datasets ade150,pc59`` gives PQ / AP on ADE-150 and mIoU on both.
    ``kwargs`` go to the DataModule and override the preset (e.g. ``root``, ``test_resize``, ``task="panoptic"``,
    ``class_names``, ``num_workers``, ``eval_batch_size``).
    """
    preset = get_eval_preset(name)
    _, chosen = resolve_protocol(name, protocol)
    task = {"task": prefer_task} if prefer_task != "semantic" and prefer_task in preset.tasks else {}
    arguments: dict[str, Any] = {
        **preset.kwargs,
        **task,
        "class_names": chosen.class_names,
        "miou_convention": chosen.miou_convention,
        **kwargs,
    }
    return preset.datamodule(**arguments)
