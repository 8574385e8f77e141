"""torchmetrics Metrics for every benchmark: semantic (confusion matrix), panoptic PQ, instance AP, region Acc@k and
OpenImages-V7 point mIoU, plus TensorBoard overlays and per-class tables. All states are DDP-synced."""

from ovs.evaluation.instance import InstanceAP
from ovs.evaluation.panoptic import PanopticQuality
from ovs.evaluation.points import PointMIoU
from ovs.evaluation.retrieval import RegionAccuracy
from ovs.evaluation.semantic import SemanticSegMetric
from ovs.evaluation.visualize import colorize, log_overlay, log_per_class_iou_table, make_palette, overlay

__all__ = [
    "InstanceAP",
    "PanopticQuality",
    "PointMIoU",
    "RegionAccuracy",
    "SemanticSegMetric",
    "colorize",
    "log_overlay",
    "log_per_class_iou_table",
    "make_palette",
    "overlay",
]
