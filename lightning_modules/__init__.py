"""LightningModules: loss, metrics, optimisation and logging around the plain models."""

from lightning_modules.checkerboard import CheckerboardEvaluator
from lightning_modules.crf import CRFEvaluator, CRFParams
from lightning_modules.metrics import Evaluator, confusion_matrix_metric, metrics_from_confusion
from lightning_modules.recipes import (
    RECIPES,
    DeepLabModule,
    DeepLabV3Module,
    FCNModule,
    PSPNetModule,
    UNetModule,
)
from lightning_modules.segmentation import SegmentationModule

__all__ = [
    "CRFEvaluator",
    "CRFParams",
    "CheckerboardEvaluator",
    "Evaluator",
    "RECIPES",
    "DeepLabModule",
    "DeepLabV3Module",
    "FCNModule",
    "PSPNetModule",
    "SegmentationModule",
    "UNetModule",
    "confusion_matrix_metric",
    "metrics_from_confusion",
]
