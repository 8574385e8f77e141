"""ResNet-50 backbone of Mask2Former R50 (maskclippp.md §8.2 step 2; detectron2 ``build_resnet_backbone`` with
``STRIDE_IN_1X1 False``, ``STEM_TYPE basic``, ``NORM FrozenBN``).

The layers are torchvision's ``resnet50`` (stride in the 3x3 convolution, as ``STRIDE_IN_1X1 False``) with
:class:`torchvision.ops.FrozenBatchNorm2d` (``y = (x - mean) / sqrt(var + 1e-5) * weight + bias``, detectron2's
``FrozenBatchNorm2d``). Outputs are named as detectron2's: ``res2`` .. ``res5`` at strides 4 / 8 / 16 / 32.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import resnet50
from torchvision.ops import FrozenBatchNorm2d

RESNET_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
RESNET_CHANNELS = {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048}


class ResNet50Backbone(nn.Module):
    """torchvision ResNet-50 trunk (no pooling head) returning ``{"res2": [B, 256, H/4, W/4], ..., "res5":
    [B, 2048, H/32, W/32]}``."""

    out_channels = RESNET_CHANNELS
    out_strides = RESNET_STRIDES

    def __init__(self) -> None:
        super().__init__()
        trunk = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
        self.conv1, self.bn1, self.relu, self.maxpool = trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))  # [B, 64, H/4, W/4]
        res2 = self.layer1(x)
        res3 = self.layer2(res2)
        res4 = self.layer3(res3)
        res5 = self.layer4(res4)
        return {"res2": res2, "res3": res3, "res4": res4, "res5": res5}
