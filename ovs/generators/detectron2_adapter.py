"""Any detectron2 meta-architecture as a :class:`~ovs.generators.base.MaskGenerator` (maskclippp.md §8.2 steps 1-4,
§8.6): Mask2Former (``maskformer2``), FC-CLIP or MAFT+ (from a directory the user points at).

The model is built from a detectron2 config (file and/or ``opts``) after importing the modules that register it,
its weights are loaded safely (``.pth``: ``torch.load(weights_only=True)``; ``.pkl``: a restricted unpickler that
only rebuilds numpy arrays and containers), and it runs in inference mode. A forward hook on the predictor
(``sem_seg_head``) reads the queries' ``pred_logits`` ``[B, Q, K + 1]`` and ``pred_masks`` ``[B, Q, h, w]`` and stops
the forward there: the model's own post-processing never runs, nothing is run twice.

Per image (batch 1, as the reference): ``ResizeShortestEdge(min_size_test, max_size_test)`` with detectron2's own
transform, the model's normalisation and padding to its size divisibility; masks = sigmoid(mask logits), bilinearly
upsampled to the padded input, cropped to the resized image and resized to the original size.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovs.data.class_names import load_class_names
from ovs.generators.base import Batch, MaskGenerator, MaskProposals, original_sizes
from ovs.generators.pickled import read_weights_file

DEFAULT_ADD_CONFIG = ("detectron2.projects.deeplab.add_deeplab_config", "mask2former.add_maskformer2_config")


class _StopForward(Exception):
    """Raised by the predictor hook once the queries are read (skips the model's own post-processing)."""


def load_weights_file(path: str | Path) -> dict[str, Any]:
    """A detectron2 checkpoint dict (``{"model": {name: tensor / array}, ...}``) read without arbitrary code."""
    path = Path(path)
    data = read_weights_file(path, "Download the generator weights (docs/maskclippp.md, 'Mask generators') and "
                                   "pass the file as `weights`.")
    if path.suffix == ".pkl":
        if not isinstance(data, dict):
            raise ValueError(f"{path} does not hold a dict of weights.")
        if "model" in data and "__author__" in data:  # detectron2 model zoo: names already in detectron2 form
            return {"model": data["model"], "__author__": data["__author__"], "matching_heuristics": True}
        model = data.get("blobs", data.get("model", data))
        return {"model": model, "__author__": "Caffe2", "matching_heuristics": True}
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a state dict.")
    return data if "model" in data else {"model": data}


def _import_object(dotted: str) -> Any:
    """``package.module.attribute`` -> the attribute."""
    module, _, attribute = dotted.rpartition(".")
    if not module:
        raise ValueError(f"Expected a dotted path 'module.attribute', got {dotted!r}.")
    return getattr(importlib.import_module(module), attribute)


class Detectron2Generator(MaskGenerator):
    """A detectron2 segmentation model (Mask2Former / FC-CLIP / MAFT+) as a mask generator.

    Args:
        config_file: detectron2 YAML config of the model (``None``: built from ``opts`` alone).
        weights: checkpoint (``.pkl`` model-zoo / ``.pth``); ``None`` keeps the random initialisation (tests).
        modules: modules to import first; they register the meta-architecture, heads and backbones
            (``mask2former``; FC-CLIP: ``fcclip``; MAFT+: ``maft``).
        add_config: dotted ``fn(cfg)`` that add the project's config keys (FC-CLIP: ``fcclip.add_fcclip_config``).
        opts: ``["KEY", "VALUE", ...]`` overrides, merged last (``cfg.merge_from_list``).
        project_dir: directory put on ``sys.path`` before importing ``modules`` (a FC-CLIP / MAFT+ checkout).
        training_vocabulary: the generator's training classes (class-name file or synonym lists): the seen set 𝒦.
        open_vocabulary: the head scores the test vocabulary (FC-CLIP / MAFT+); then ``vocabulary_hook`` is needed.
        vocabulary_hook: dotted ``fn(model, class_names)`` that makes an open-vocabulary model score
            ``class_names`` (synonym lists; e.g. rebuilds FC-CLIP's text classifier).
        head: attribute path of the predictor whose output holds ``pred_logits`` / ``pred_masks``.
        min_size_test, max_size_test: test resize (default: the config's ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``).
        allow_missing: parameter-name prefixes the weights file may lack (the loss; FC-CLIP / MAFT+ checkpoints that
            hold only the head: ``backbone.clip_model.``, which open_clip loads itself).
    """

    def __init__(
        self,
        config_file: str | None = None,
        weights: str | None = None,
        modules: Sequence[str] = ("mask2former",),
        add_config: Sequence[str] = DEFAULT_ADD_CONFIG,
        opts: Sequence[str] = (),
        project_dir: str | None = None,
        training_vocabulary: str | list[list[str]] | None = "coco_panoptic",
        open_vocabulary: bool = False,
        vocabulary_hook: str | None = None,
        head: str = "sem_seg_head",
        min_size_test: int | None = None,
        max_size_test: int | None = None,
        allow_missing: Sequence[str] = ("criterion.",),
    ) -> None:
        super().__init__()
        from ovs.generators import d2compat

        d2compat.import_detectron2()
        if project_dir is not None:
            directory = str(Path(project_dir).expanduser().resolve())
            if not Path(directory).is_dir():
                raise FileNotFoundError(f"project_dir {directory} is not a directory (a FC-CLIP / MAFT+ checkout).")
            if directory not in sys.path:
                sys.path.insert(0, directory)
        for name in modules:
            if name == "mask2former":
                d2compat.import_mask2former()
            else:
                importlib.import_module(name)
        if open_vocabulary and vocabulary_hook is None:
            raise ValueError("An open-vocabulary generator needs vocabulary_hook (fn(model, class_names)).")
        self.cfg = self._build_config(config_file, add_config, opts)
        from detectron2.modeling import build_model

        self.model = build_model(self.cfg).eval().requires_grad_(False)
        if weights is not None:
            self._load(weights, tuple(allow_missing))
        self.head = self._resolve(head)
        self.min_size_test = int(min_size_test or self.cfg.INPUT.MIN_SIZE_TEST)
        self.max_size_test = int(max_size_test or self.cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = str(self.cfg.INPUT.FORMAT)
        self.open_vocabulary = open_vocabulary
        self.vocabulary_hook: Callable[[nn.Module, list[list[str]]], None] | None = (
            None if vocabulary_hook is None else _import_object(vocabulary_hook)
        )
        names = training_vocabulary
        self.training_vocabulary = load_class_names(names) if isinstance(names, str) else names
        self.logits_vocabulary = None if open_vocabulary else self.training_vocabulary
        if self.logits_vocabulary is not None:
            expected = self._num_classes()
            if expected is not None and expected != len(self.logits_vocabulary):
                raise ValueError(
                    f"The generator classifies {expected} classes but training_vocabulary has "
                    f"{len(self.logits_vocabulary)}; give the class names of its training set (in label order)."
                )

    @staticmethod
    def _build_config(config_file: str | None, add_config: Sequence[str], opts: Sequence[str]) -> Any:
        from detectron2.config import get_cfg

        cfg = get_cfg()
        for dotted in add_config:
            _import_object(dotted)(cfg)
        cfg.set_new_allowed(True)
        if config_file is not None:
            if not Path(config_file).is_file():
                raise FileNotFoundError(f"detectron2 config file not found: {config_file}.")
            cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts))
        if not torch.cuda.is_available():
            cfg.MODEL.DEVICE = "cpu"
        cfg.freeze()
        return cfg

    def _load(self, weights: str, allow_missing: tuple[str, ...]) -> None:
        from detectron2.checkpoint import DetectionCheckpointer

        checkpoint = load_weights_file(weights)
        checkpointer = DetectionCheckpointer(self.model)
        incompatible = checkpointer._load_model(checkpoint)
        if incompatible is not None and incompatible.missing_keys:
            missing = [k for k in incompatible.missing_keys if not k.startswith(allow_missing)]
            if missing:
                raise ValueError(f"{weights} does not fit the generator config: {len(missing)} missing tensors "
                                 f"(e.g. {missing[:3]}). Use the config file the weights were trained with.")

    def _resolve(self, path: str) -> nn.Module:
        module: Any = self.model
        for part in path.split("."):
            if not hasattr(module, part):
                raise ValueError(f"The generator model has no sub-module {path!r} (set `head`).")
            module = getattr(module, part)
        return module

    def _num_classes(self) -> int | None:
        for key in ("SEM_SEG_HEAD",):
            value = getattr(self.cfg.MODEL, key, None)
            if value is not None and hasattr(value, "NUM_CLASSES"):
                return int(value.NUM_CLASSES)
        return None

    def set_vocabulary(self, class_names: Sequence[Sequence[str]]) -> None:
        super().set_vocabulary(class_names)
        if self.vocabulary_hook is not None and self.vocabulary is not None:
            self.vocabulary_hook(self.model, self.vocabulary)

    def _resize(self, image: Tensor) -> Tensor:
        """detectron2 ``ResizeShortestEdge`` of a uint8 ``[3, H, W]`` RGB image -> float ``[3, h, w]`` in the
        model's input format."""
        from detectron2.data import transforms as T

        array = image.permute(1, 2, 0).cpu().numpy().astype(np.uint8)  # [H, W, 3] RGB
        resize = T.ResizeShortestEdge([self.min_size_test, self.min_size_test], self.max_size_test)
        array = resize.get_transform(array).apply_image(array)
        if self.input_format == "BGR":
            array = array[:, :, ::-1]
        return torch.from_numpy(np.array(array)).permute(2, 0, 1).float()  # copy: PIL arrays are read-only

    @torch.inference_mode()
    def _run(self, image: Tensor, size: tuple[int, int]) -> MaskProposals:
        captured: dict[str, Any] = {}

        def read_input(_: nn.Module, args: tuple[Any, ...]) -> None:
            captured["padded"] = tuple(args[0].shape[-2:])

        def read_output(_: nn.Module, __: Any, output: Any) -> None:
            captured["output"] = output
            raise _StopForward

        resized = self._resize(image)
        handles = [
            self.model.backbone.register_forward_pre_hook(read_input),
            self.head.register_forward_hook(read_output),
        ]
        try:
            self.model([{"image": resized, "height": size[0], "width": size[1]}])
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        if "output" not in captured:
            raise RuntimeError(f"The generator's {type(self.head).__name__} did not run; check `head`.")
        output = captured["output"]
        logits = output["pred_logits"][0].float()  # [Q, K + 1]
        masks = output["pred_masks"][0].float().sigmoid()  # [Q, h, w]
        masks = F.interpolate(masks[None], size=captured["padded"], mode="bilinear", align_corners=False)
        masks = masks[..., : resized.shape[-2], : resized.shape[-1]]
        masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)[0]  # [Q, H, W]
        return MaskProposals(masks.clamp(0, 1), logits, self.logits_vocabulary)

    def forward(self, batch: Batch) -> list[MaskProposals]:
        return [self._run(image, size) for image, size in zip(batch["image"], original_sizes(batch))]


def set_fcclip_vocabulary(model: nn.Module, class_names: list[list[str]]) -> None:
    """``vocabulary_hook`` for FC-CLIP and MAFT+ (FC-CLIP-derived): score ``class_names`` with the model's own text
    classifier (its ``set_metadata`` with the comma-joined synonyms, max over synonyms inside the head)."""
    from types import SimpleNamespace

    if not hasattr(model, "set_metadata"):
        raise TypeError(f"{type(model).__name__} has no set_metadata(); it is not an FC-CLIP-style model.")
    model.set_metadata(SimpleNamespace(stuff_classes=[",".join(names) for names in class_names]))
