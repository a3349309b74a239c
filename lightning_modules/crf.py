"""Fully-connected CRF post-processing (Krähenbühl & Koltun 2011), as DeepLab v1/v2 use it.

DeepLab v2 (TPAMI'17, Sec. 3.3 and Table 3) reports every VGG row before and after the CRF.
The default parameters are those of the DeepLab v2 reference as re-released by
kazuto1011/deeplab-pytorch (``configs/voc12.yaml``: 10 mean-field iterations, Gaussian kernel
w=3, sigma_xy=1; bilateral kernel w=4, sigma_xy=67, sigma_rgb=3). They were cross-validated on
VOC val at full resolution; on other data or image sizes they are a starting point, which is why
they are arguments and are recorded with every result.

``pydensecrf`` (PyPI package ``pydensecrf2``) runs on the CPU, one image at a time.
:class:`CRFEvaluator` refines every evaluated image's probabilities and scores the refined
argmax with a copy of the module's metrics, so the before/after numbers sit side by side
(``last_metrics["val"]`` and ``last_metrics["val_crf"]``), with per-image counts of both
(``last_per_image["val_crf"]``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torchmetrics import MetricCollection

from lightning_modules.metrics import summarise
from lightning_modules.per_image import per_image_counts


@dataclass(frozen=True)
class CRFParams:
    iterations: int = 10
    pos_w: float = 3.0
    pos_xy_std: float = 1.0
    bi_w: float = 4.0
    bi_xy_std: float = 67.0
    bi_rgb_std: float = 3.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def dense_crf(image: np.ndarray, probs: np.ndarray, params: CRFParams = CRFParams()) -> np.ndarray:
    """Refine class probabilities ``probs`` (C×H×W, summing to 1) for uint8 RGB ``image`` (H×W×3).

    Returns the refined C×H×W probabilities (float32).
    """
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError as err:  # pragma: no cover - the package is in requirements.txt
        raise ImportError(
            "dense CRF needs pydensecrf: python -m pip install pydensecrf2 (imports as pydensecrf)"
        ) from err
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"dense_crf needs a uint8 H×W×3 image, got {image.dtype} {image.shape}")
    c, h, w = probs.shape
    if image.shape[:2] != (h, w):
        raise ValueError(f"image {image.shape[:2]} and probabilities {(h, w)} differ in size")
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs.astype(np.float32))))
    crf.addPairwiseGaussian(sxy=params.pos_xy_std, compat=params.pos_w)
    crf.addPairwiseBilateral(
        sxy=params.bi_xy_std, srgb=params.bi_rgb_std, rgbim=np.ascontiguousarray(image), compat=params.bi_w
    )
    q = crf.inference(params.iterations)
    return np.asarray(q, dtype=np.float32).reshape(c, h, w)


def denormalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Normalised N×3×H×W float images back to uint8 N×H×W×3 (what the CRF's colour term needs)."""
    m = images.new_tensor(mean).view(1, 3, 1, 1)
    s = images.new_tensor(std).view(1, 3, 1, 1)
    rgb = ((images.float() * s + m) * 255).round().clamp(0, 255).to(torch.uint8)
    return rgb.permute(0, 2, 3, 1).contiguous()


class CRFEvaluator(nn.Module):
    """The segmentation metrics after the dense CRF (an :class:`~lightning_modules.metrics.Evaluator`)."""

    name = "crf"
    final_only = True  # the final evaluation only, not every validation during training

    def __init__(self, params: CRFParams = CRFParams()) -> None:
        super().__init__()
        if not isinstance(params, CRFParams):
            raise ValueError(f"CRFEvaluator needs CRFParams, got {type(params).__name__}")
        self.params = params
        self.metrics: MetricCollection | None = None

    def setup(self, metrics: MetricCollection) -> None:
        self.metrics = metrics.clone(prefix="crf_")

    def update(self, images: torch.Tensor, probs: torch.Tensor, masks: torch.Tensor, module) -> None:
        rgb = denormalize(images, module.hparams.mean, module.hparams.std).cpu().numpy()
        p = probs.float().cpu().numpy()
        refined = [torch.from_numpy(dense_crf(rgb[i], p[i], self.params)) for i in range(len(rgb))]
        self.metrics.update(torch.stack(refined).argmax(1).to(masks.device), masks,
                            index=getattr(module, "batch_indices", None))

    def compute(self) -> dict[str, object]:
        return summarise(self.metrics)

    def per_image(self) -> dict[str, np.ndarray] | None:
        """The after-CRF per-image counts (``lightning_modules.per_image``)."""
        return per_image_counts(self.metrics)

    def reset(self) -> None:
        self.metrics.reset()

    def extra_repr(self) -> str:
        return repr(self.params)
