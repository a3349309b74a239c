"""LightningModules: loss, metrics, optimisation and logging around the plain models."""

from lightning_modules.checkerboard import CheckerboardEvaluator
from lightning_modules.crf import CRFEvaluator, CRFParams
from lightning_modules.metrics import Evaluator, confusion_matrix_metric, metrics_from_confusion
from lightning_modules.segmentation import SegmentationModule

__all__ = [
    "CRFEvaluator",
    "CRFParams",
    "CheckerboardEvaluator",
    "Evaluator",
    "SegmentationModule",
    "confusion_matrix_metric",
    "metrics_from_confusion",
]
