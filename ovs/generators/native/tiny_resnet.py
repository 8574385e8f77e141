"""A tiny ResNet backbone for the toy mask generator of the embedded demo (issue 13 item 5; docs/synthetic.md
"The toy mask generator").

ResNet-18-style BasicBlocks (two 3x3 convolutions and an identity / 1x1-projection shortcut, He et al. 2016 §3.3)
at widths 32 / 64 / 128 / 256 with one block per stage by default, named as detectron2's ResNets so the Mask2Former
pixel decoder takes it unchanged: ``res2`` .. ``res5`` at strides 4 / 8 / 16 / 32. The stem is two 3x3
convolutions of stride 2 (no max-pool): at the 112 px of the synthetic benchmark a 7x7 convolution + max-pool would
discard detail the 28 x 28 ``res2`` map still needs.

Normalisation is ``GroupNorm(8, C)``, not BatchNorm: the backbone is trained from scratch with small batches (8
images), GroupNorm's statistics do not depend on the batch or on the zero padding of the input, and training and
inference compute the same function (no running statistics to drift), as the pixel decoder's GroupNorm layers.
About 1.2 M parameters (4.8 MB in fp32) with one block per stage; ResNet-50 has 23.5 M.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

TINY_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
TINY_WIDTHS = (32, 64, 128, 256)
GROUPS = 8


def conv_norm(in_channels: int, out_channels: int, kernel_size: int, stride: int) -> nn.Sequential:
    """``Conv2d`` (no bias) + ``GroupNorm(8)``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False),
        nn.GroupNorm(GROUPS, out_channels),
    )


class BasicBlock(nn.Module):
    """``relu(conv_norm(relu(conv_norm(x))) + shortcut(x))``; the first convolution carries the stride, the
    shortcut is a strided 1x1 ``conv_norm`` when the shape changes. The last GroupNorm's scale starts at 0 (Goyal et
    al. 2017 "zero-γ"), so every block starts as its shortcut: stable from-scratch training at a high LR."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv_norm(in_channels, out_channels, 3, stride)
        self.conv2 = conv_norm(out_channels, out_channels, 3, 1)
        nn.init.zeros_(self.conv2[1].weight)
        self.relu = nn.ReLU(inplace=True)
        changed = stride != 1 or in_channels != out_channels
        self.shortcut = conv_norm(in_channels, out_channels, 1, stride) if changed else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.conv2(self.relu(self.conv1(x))) + self.shortcut(x))


class TinyResNetBackbone(nn.Module):
    """Tiny ResNet trunk: images ``[B, 3, H, W]`` (H, W multiples of 32) -> ``{"res2": [B, 32, H/4, W/4],
    "res3": [B, 64, H/8, W/8], "res4": [B, 128, H/16, W/16], "res5": [B, 256, H/32, W/32]}``.

    Args:
        widths: channels of ``res2`` .. ``res5``.
        depths: BasicBlocks per stage.
    """

    out_strides = TINY_STRIDES

    def __init__(self, widths: Sequence[int] = TINY_WIDTHS, depths: Sequence[int] = (1, 1, 1, 1)) -> None:
        super().__init__()
        if len(widths) != 4 or len(depths) != 4 or min(depths) < 1 or any(w % GROUPS for w in widths):
            raise ValueError(f"TinyResNetBackbone needs 4 widths divisible by {GROUPS} and 4 depths >= 1, got "
                             f"widths={list(widths)}, depths={list(depths)}.")
        self.out_channels = {name: int(width) for name, width in zip(TINY_STRIDES, widths)}
        self.stem = nn.Sequential(
            conv_norm(3, widths[0] // 2, 3, 2), nn.ReLU(inplace=True),  # [B, w0/2, H/2, W/2]
            conv_norm(widths[0] // 2, widths[0], 3, 2), nn.ReLU(inplace=True),  # [B, w0, H/4, W/4]
        )
        stages = []
        in_channels = widths[0]
        for index, (width, depth) in enumerate(zip(widths, depths)):
            stride = 1 if index == 0 else 2
            blocks = [BasicBlock(in_channels, width, stride)]
            blocks += [BasicBlock(width, width, 1) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            in_channels = width
        self.stages = nn.ModuleList(stages)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        x = self.stem(images)  # [B, w0, H/4, W/4]
        features = {}
        for name, stage in zip(TINY_STRIDES, self.stages):
            x = stage(x)
            features[name] = x
        return features
