"""Training-step time and peak memory of MaskCLIP++ (docs/maskclippp.md, "Performance").

    python tools/benchmark_maskclippp.py                          # ConvNeXt-B, 1024 x 1024, 2 images, auto device
    python tools/benchmark_maskclippp.py --device cuda --steps 50 --warmup 10
    python tools/benchmark_maskclippp.py --model ViT-B-16 --size 512 --psm linear
    python tools/benchmark_maskclippp.py --device cuda --batch 4 --precision bf16-mixed --channels-last --json r.json

Runs real Lightning training steps of :class:`ovs.methods.maskclippp.MaskCLIPPP` (the paper's recipe: AdamW, per-group
LR multipliers, cosine schedule, clip 0.01, fp16 AMP on CUDA / fp32 on CPU) on random CLIP weights (architecture of
``--model``, no download) and random uint8 images of ``--size`` x ``--size`` (the LSJ crop) with ``--masks`` random
rectangle masks per image (COCO-Panoptic averages about 11 segments per image), per-device batch ``--batch``
(2 = the reference's 2 GPUs x 2). The frozen text bank has the training shape (COCO-Panoptic's 254 names x 14
templates) but random content: encoding it (a one-time cost before step 1, minutes on a CPU) is not timed.

``--channels-last`` stores the 4-D visual weights in channels-last layout (cuDNN then runs the ConvNeXt convolutions
in NHWC).

Reported: median and mean time of the timed steps (after ``--warmup`` steps; CUDA synchronised), images per second,
the projected time of 20k steps at this per-device batch, and the peak memory: ``torch.cuda.max_memory_allocated``
on CUDA, the peak resident-set size of the process (sampled every 2 ms) on CPU.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: much faster on a shared CPU

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from lightning import Callback, LightningDataModule, LightningModule, Trainer  # noqa: E402
from torch import Tensor  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ovs.data import list_collate, load_class_names  # noqa: E402
from ovs.methods.maskclippp import MaskCLIPPP  # noqa: E402


class RandomTextMaskCLIPPP(MaskCLIPPP):
    """MaskCLIP++ whose frozen training text bank is random (normalised) instead of encoded: same shapes and cost per
    step, without the one-time text encoding."""

    def encode_train_text(self, templates: Sequence[str]) -> Tensor:
        assert self.train_vocabulary is not None
        names = sum(len(synonyms) for synonyms in self.train_vocabulary)
        bank = torch.randn(names, len(templates), self.clip.embed_dim, generator=torch.Generator().manual_seed(0))
        return torch.nn.functional.normalize(bank, dim=-1)


class RandomMaskDataset(Dataset):
    """Random images with ``num_masks`` random rectangles each (labels in 0..132)."""

    def __init__(self, length: int, size: int, num_masks: int) -> None:
        self.length, self.size, self.num_masks = length, size, num_masks

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(index)
        s = self.size
        corners = torch.randint(0, s // 2, (self.num_masks, 2), generator=g)
        extents = torch.randint(s // 16, s // 2, (self.num_masks, 2), generator=g)
        rows, cols = torch.arange(s)[None, :, None], torch.arange(s)[None, None, :]
        masks = ((rows >= corners[:, 0, None, None]) & (rows < (corners[:, 0] + extents[:, 0])[:, None, None])
                 & (cols >= corners[:, 1, None, None]) & (cols < (corners[:, 1] + extents[:, 1])[:, None, None]))
        return {
            "image": torch.randint(0, 256, (3, s, s), dtype=torch.uint8, generator=g),
            "masks": masks,
            "mask_labels": torch.randint(0, 133, (self.num_masks,), generator=g),
        }


class RandomDataModule(LightningDataModule):
    def __init__(self, length: int, size: int, num_masks: int, batch_size: int) -> None:
        super().__init__()
        self.dataset = RandomMaskDataset(length, size, num_masks)
        self.batch_size = batch_size
        self.class_names = load_class_names("coco_panoptic")

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False, collate_fn=list_collate,
                          num_workers=2, persistent_workers=True)


class PeakRSS:
    """Peak resident-set size of this process, sampled every 2 ms in a thread (CPU runs)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.002)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class StepTimer(Callback):
    """Wall time of each training step (optimizer step included), CUDA synchronised."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    @staticmethod
    def _sync(module: LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_start(self, trainer: Trainer, module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._sync(module)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._sync(module)
        self.times.append(time.perf_counter() - self._start)
        print(f"step {len(self.times)}: {self.times[-1]:.3f} s, loss {float(outputs['loss']):.3f}", flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="convnext_base_w_320")
    parser.add_argument("--psm", default="auto")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=2, help="per-device batch")
    parser.add_argument("--masks", type=int, default=11, help="masks per image")
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", default=None, help="Lightning precision (default 16-mixed on CUDA, 32 on CPU)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last visual weights (NHWC convs)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    precision = args.precision or ("16-mixed" if device == "cuda" else "32-true")
    total = args.warmup + args.steps
    torch.manual_seed(0)
    model = RandomTextMaskCLIPPP(args.model, pretrained=None, train_class_names="coco_panoptic", psm=args.psm,
                       total_batch_size=None, eval_psm="psm")
    if args.channels_last:
        model.clip.model.visual.to(memory_format=torch.channels_last)
    data = RandomDataModule(total * args.batch, args.size, args.masks, args.batch)
    timer = StepTimer()
    trainer = Trainer(
        accelerator="gpu" if device == "cuda" else "cpu", devices=1, precision=precision, max_steps=total,
        gradient_clip_val=0.01, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, callbacks=[timer],
    )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as rss:
        trainer.fit(model, data)
    timed = timer.times[args.warmup :]
    median = statistics.median(timed)
    result = {
        "model": args.model,
        "psm": model.psm_name,
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "precision": precision,
        "channels_last": args.channels_last,
        "image_size": args.size,
        "batch_per_device": args.batch,
        "masks_per_image": args.masks,
        "timed_steps": len(timed),
        "step_time_median_s": round(median, 4),
        "step_time_mean_s": round(statistics.fmean(timed), 4),
        "images_per_s": round(args.batch / median, 3),
        "projected_20k_steps_h": round(20000 * median / 3600, 2),
        "trainable_params_M": round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 2),
    }
    if device == "cuda":
        result["peak_gpu_memory_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    else:
        result["peak_rss_GiB"] = round(rss.peak / 2**30, 2)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
