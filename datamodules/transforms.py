"""Joint image/mask transforms for training and evaluation (torchvision.transforms.v2).

Recipes (``augment``):

- ``"none"``: pad to the crop size, centre crop. Deterministic; the batches still need one size.
- ``"flip"``: pad, random crop, horizontal flip.
- ``"deeplab"``: random scale by a factor drawn uniformly from ``scale_range`` (DeepLab v2
  Sec. 4 and v3 Sec. 4.1 use 0.5-2.0), or with ``scale_step`` from the grid
  low:step:high (the official DeepLab v3 code: 0.5:0.25:2.0), pad, random crop, horizontal flip.
- ``"pspnet"``: PSPNet Sec. 4.1 / hszhao/semseg order: random scale, random rotation in
  ±``rotate_degrees`` (p=0.5), Gaussian blur of the image (kernel 5, sigma 1.1 — OpenCV's sigma
  for a 5-tap kernel — p=0.5), horizontal flip, pad, random crop. Rotation is the expensive
  step (torchvision's ``grid_sample`` path, ~0.1 s for a 2×-scaled VOC image and its mask).
- ``"unet"``: U-Net Sec. 3.1, "shift and rotation invariance as well as robustness to
  deformations and gray value variations": an elastic deformation (:class:`ElasticDeformation`:
  random displacement vectors on a coarse 3×3 grid, σ = 10 px, per-pixel displacements by
  bicubic interpolation), a random rotation in ±``UNET_ROTATE_DEGREES``, grey-value changes
  (brightness and contrast ×[0.8, 1.2], image only) and the shift of a random crop position.
  The paper gives the deformation's grid and σ; the rotation and grey-value ranges are ours. No
  flips (the paper lists none).

``crop_size=None`` trains on whole images (FCN Sec. 4.3; the FCN paper preset with ``augment=
"none"``): no padding and no crop, so a batch holds images of different sizes, which
``datamodules.base.pad_collate`` pads to the largest one (mean colour / ``IGNORE_INDEX``).

Padding fills images with the mean colour (``round(mean * 255)`` in uint8, so it becomes 0
after normalisation) and masks with ``IGNORE_INDEX``; torchvision's ``pad_if_needed`` splits
the padding between both sides at random, which places a small image at a random offset
inside the crop rather than always top-left as Caffe DeepLab did. Masks are only ever resized
and rotated nearest-neighbour (torchvision's mask kernels force NEAREST whatever the
interpolation argument) and never blurred or colour-jittered (those kernels pass masks
through); masks travel as uint8 inside the pipeline because nearest resizing of int64 is ~60×
slower, and come out as int64 H×W. Images come out float32 normalised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from datamodules.constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "AUGMENTATIONS",
    "ElasticDeformation",
    "GaussianBlur",
    "JointTransform",
    "RandomScale",
    "eval_transforms",
    "train_transforms",
]

AUGMENTATIONS = ("none", "flip", "deeplab", "pspnet", "unet")
UNET_ROTATE_DEGREES = 15.0   # ours: U-Net Sec. 3.1 names rotations without a range
UNET_GREY = 0.2              # ours: brightness and contrast factors in [0.8, 1.2]


def scale_grid(scale_range: tuple[float, float], step: float) -> list[float]:
    """The factors tensorflow/models ``research/deeplab/core/preprocess_utils.py``
    ``get_random_scale`` chooses from: ``lin_space(min, max, int((max - min) / step + 1))``
    (0.5:0.25:2.0 with the official ``train.py`` defaults)."""
    lo, hi = scale_range
    num = int((hi - lo) / step + 1)
    return [lo] if num <= 1 else [lo + (hi - lo) * i / (num - 1) for i in range(num)]


class RandomScale(v2.Transform):
    """Resize by one factor drawn uniformly from ``scale_range``, keeping the aspect ratio;
    with ``step``, one factor drawn uniformly from the grid :func:`scale_grid` (DeepLab v3/v3+).

    (``v2.RandomResize`` draws a target edge length and ``v2.ScaleJitter`` scales relative to a
    target size; neither is the papers' "scale the image by s".) Images use bilinear with
    antialiasing, masks nearest.
    """

    def __init__(self, scale_range: tuple[float, float], step: float | None = None) -> None:
        super().__init__()
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        if step is not None and not step > 0:
            raise ValueError(f"scale step must be > 0 (or None: continuous), got {step}")
        self.scale_range = (float(lo), float(hi))
        self.step = step
        self.grid = scale_grid(self.scale_range, step) if step is not None else None

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        lo, hi = self.scale_range
        if self.grid is not None:
            s = self.grid[int(torch.randint(len(self.grid), ()))]
        else:
            s = lo + (hi - lo) * float(torch.rand(()))
        return {"size": [max(1, round(h * s)), max(1, round(w * s))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(
            F.resize,
            inpt,
            size=params["size"],
            interpolation=v2.InterpolationMode.BILINEAR,
            antialias=True,
        )


class GaussianBlur(v2.Transform):
    """Gaussian blur of images only (masks and everything else pass through).

    Separable, as sums of shifted slices with reflection padding: the same result as
    ``v2.GaussianBlur`` (within 1 grey level on uint8) about 7× faster on CPU (21 vs 152 ms on
    a 1000×750 image, one thread), because torchvision runs a dense 2-D depthwise ``conv2d``.
    """

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, kernel_size: int = 5, sigma: float = 1.1) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 != 1 or sigma <= 0:
            raise ValueError(f"need an odd kernel_size and sigma > 0, got {kernel_size}, {sigma}")
        x = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
        k = torch.exp(-0.5 * (x / sigma) ** 2)
        self.weights = (k / k.sum()).tolist()

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        r = len(self.weights) // 2
        h, w = inpt.shape[-2:]
        if min(h, w) <= r:  # reflection padding needs more pixels than the radius
            return inpt
        x = inpt.as_subclass(torch.Tensor).reshape(-1, *inpt.shape[-3:]).to(torch.float32)
        x = torch.nn.functional.pad(x, (r, r, r, r), mode="reflect")
        y = x[..., :w] * self.weights[0]
        for i, k in enumerate(self.weights[1:], 1):
            y.add_(x[..., i : i + w], alpha=k)
        z = y[..., :h, :] * self.weights[0]
        for i, k in enumerate(self.weights[1:], 1):
            z.add_(y[..., i : i + h, :], alpha=k)
        if not inpt.dtype.is_floating_point:
            info = torch.iinfo(inpt.dtype)
            z = z.round_().clamp_(info.min, info.max)
        return tv_tensors.wrap(z.to(inpt.dtype).reshape(inpt.shape), like=inpt)


class ElasticDeformation(v2.Transform):
    """U-Net Sec. 3.1: "smooth deformations using random displacement vectors on a coarse 3 by 3
    grid. The displacements are sampled from a Gaussian distribution with 10 pixels standard
    deviation. Per-pixel displacements are then computed using bicubic interpolation."

    One displacement field per call (``grid`` × ``grid`` vectors, N(0, ``sigma``²) px each,
    the grid points on the image's corners, edges and centre), upsampled bicubically to every
    pixel; image and mask are both resampled at ``pixel + displacement`` with the same field:
    the image ``image_interpolation`` (bilinear; "nearest" for tests), the mask always
    nearest, so it only ever holds labels it had. Samples beyond the border are mirrored (the
    paper's overlap-tile inference mirrors too), so no fill label is introduced.
    """

    def __init__(self, grid: int = 3, sigma: float = 10.0, image_interpolation: str = "bilinear") -> None:
        super().__init__()
        if grid < 2 or sigma < 0:
            raise ValueError(f"need grid >= 2 and sigma >= 0, got {grid}, {sigma}")
        if image_interpolation not in ("bilinear", "nearest"):
            raise ValueError(f"image_interpolation must be 'bilinear' or 'nearest', got {image_interpolation!r}")
        self.grid, self.sigma, self.image_interpolation = grid, float(sigma), image_interpolation

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        coarse = torch.randn(1, 2, self.grid, self.grid) * self.sigma  # (dx, dy) in pixels
        dense = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)[0]
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
        x, y = xs + dense[0], ys + dense[1]
        # grid_sample's normalised coordinates with align_corners=True: -1 / +1 = first / last pixel
        gx = 2 * x / max(w - 1, 1) - 1
        gy = 2 * y / max(h - 1, 1) - 1
        return {"grid": torch.stack([gx, gy], dim=-1)[None], "displacement": dense}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            return inpt
        mask = isinstance(inpt, tv_tensors.Mask)
        x = inpt.as_subclass(torch.Tensor)
        shape = x.shape
        x = x.reshape(1, -1, *shape[-2:]).to(torch.float32)
        mode = "nearest" if mask else self.image_interpolation
        y = torch.nn.functional.grid_sample(x, params["grid"], mode=mode, padding_mode="reflection",
                                            align_corners=True)
        if not inpt.dtype.is_floating_point:
            info = torch.iinfo(inpt.dtype)
            y = y.round_().clamp_(info.min, info.max)
        return tv_tensors.wrap(y.to(inpt.dtype).reshape(shape), like=inpt)


class _CheckMaskRange(v2.Transform):
    """Masks enter as uint8 (values 0-255); refuse anything that would wrap around."""

    _transformed_types = (tv_tensors.Mask,)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if inpt.dtype != torch.uint8:
            if inpt.numel() and (int(inpt.min()) < 0 or int(inpt.max()) > 255):
                raise ValueError(
                    f"mask values must lie in 0..255 for the transforms, found "
                    f"{int(inpt.min())}..{int(inpt.max())}"
                )
            inpt = tv_tensors.wrap(inpt.to(torch.uint8), like=inpt)
        return inpt


class JointTransform:
    """Apply a v2 pipeline to ``(image, mask)``: uint8 3×H×W and integer H×W tensors in,
    plain float32 3×H×W and int64 H×W tensors out. Wrapping into ``tv_tensors`` is what makes
    v2 treat the second tensor as a mask instead of passing it through untouched."""

    def __init__(self, transforms: Sequence[v2.Transform]) -> None:
        self.pipeline = v2.Compose([_CheckMaskRange(), *transforms])

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.pipeline(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).to(torch.int64)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pipeline})"


def _pair(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"crop_size must be a positive int or (height, width), got {size}")
    return size


def _normalise(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ]


def mean_fill(mean: Sequence[float]) -> tuple[int, int, int]:
    """The uint8 colour that normalises to (almost exactly) zero."""
    return tuple(int(round(m * 255)) for m in mean)


def train_transforms(
    crop_size: int | tuple[int, int] | None,
    scale_range: tuple[float, float] = (0.5, 2.0),
    augment: str = "deeplab",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    rotate_degrees: float = 10.0,
    scale_step: float | None = None,
    blur: bool = True,
    color_jitter: bool = False,
) -> JointTransform:
    """Training pipeline; see the module docstring for the recipes.

    ``rotate_degrees`` and ``blur`` only matter for ``augment="pspnet"``; ``color_jitter``
    (brightness/contrast/saturation 0.4, image only, off in all reproduced papers) can be added
    to any recipe. ``crop_size=None``: whole images (no padding, no crop).
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
    crop = _pair(crop_size)

    def fill() -> dict:  # a fresh dict per transform: torchvision converts it in place
        return {tv_tensors.Image: list(mean_fill(mean)), tv_tensors.Mask: IGNORE_INDEX}

    steps: list[v2.Transform] = []
    if augment in ("deeplab", "pspnet"):
        steps.append(RandomScale(scale_range, scale_step))
    if augment == "pspnet":
        if rotate_degrees:
            rotate = v2.RandomRotation(
                rotate_degrees, interpolation=v2.InterpolationMode.BILINEAR, fill=fill()
            )
            steps.append(v2.RandomApply([rotate], p=0.5))
        if blur:
            steps.append(v2.RandomApply([GaussianBlur(5, sigma=1.1)], p=0.5))
    if augment == "unet":
        steps += [
            ElasticDeformation(grid=3, sigma=10.0),
            v2.RandomRotation(UNET_ROTATE_DEGREES, interpolation=v2.InterpolationMode.BILINEAR, fill=fill()),
            v2.ColorJitter(brightness=UNET_GREY, contrast=UNET_GREY),  # grey values: images only
        ]
    if color_jitter:
        steps.append(v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4))
    if augment == "none":
        if crop is not None:
            steps += [_PadTo(crop, fill()), v2.CenterCrop(crop)]
    else:
        if augment == "pspnet":
            steps.append(v2.RandomHorizontalFlip())
        if crop is not None:  # the crop's random position is U-Net's shift
            steps.append(v2.RandomCrop(crop, pad_if_needed=True, fill=fill(), padding_mode="constant"))
        if augment not in ("pspnet", "unet"):
            steps.append(v2.RandomHorizontalFlip())
    return JointTransform(steps + _normalise(mean, std))


class _PadTo(v2.Transform):
    """Pad bottom/right up to ``size`` (no-op when already large enough)."""

    def __init__(self, size: tuple[int, int], fill: dict) -> None:
        super().__init__()
        self.size = size
        self.fill = fill

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        return {"padding": [0, 0, max(0, self.size[1] - w), max(0, self.size[0] - h)]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not any(params["padding"]):
            return inpt
        fill = self.fill[tv_tensors.Mask if isinstance(inpt, tv_tensors.Mask) else tv_tensors.Image]
        return self._call_kernel(F.pad, inpt, padding=params["padding"], fill=fill)


def eval_transforms(
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> JointTransform:
    """Evaluation: the full image, normalised; the mask untouched at its original resolution."""
    return JointTransform(_normalise(mean, std))
