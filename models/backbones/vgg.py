"""VGG16 (Simonyan & Zisserman, ICLR'15, configuration D) as the FCN and DeepLab backbone.

Written here rather than taken from timm because both papers change its geometry, but with
timm's parameter names (``features.N.weight``; fc6/fc7 in convolutional form as
``pre_logits.fc1`` / ``pre_logits.fc2``), so ImageNet weights saved from
``timm.create_model("vgg16")`` (``vgg16.tv_in1k``) load by name through :mod:`models.pretrained`.

Two layouts of the same 13 convolutions:

- FCN (Long et al., CVPR'15, Sec. 3.1 and the reference Caffe nets): 2×2/2 max pooling, output
  stride 32. ``first_padding=100`` is the reference's ``conv1_1`` padding, which lets the
  un-padded 7×7 fc6 run on any input size; the FCN model then crops with Caffe ``Crop`` layers.
- DeepLab (v1, ICLR'15, Sec. 3.1 / 4.1 and the reference ``DeepLab-LargeFOV/train.prototxt``,
  ``dilated=True``): pool1–3 are 3×3/2 with padding 1, pool4 and pool5 are 3×3/1 with padding 1
  (the subsampling is skipped), and the three conv5 layers are dilated by 2 (the "hole"
  algorithm), giving output stride 8.

Every pool outputs ``ceil(H / 2)`` (stride 2) or ``H`` (stride 1): Caffe's ceil rounding for
FCN's 2×2 pools (which the FCN alignment relies on), floor rounding for DeepLab's padded 3×3
pools, which equals Caffe's on the odd crops DeepLab uses (321 → 161 → 81 → 41) and keeps
even sizes at ``H / 2`` where Caffe would add a row.

``width`` scales every channel count (fc layers included) with :func:`scale_channels`.

``batch_norm=True`` puts BatchNorm after each of the 13 convolutions (conv → BN → ReLU, timm's
``vgg16_bn`` layout and weight names). Neither FCN nor DeepLab used it (default ``False``); it
exists because plain VGG16 trained from scratch does not learn within the few hundred CPU steps
of the smoke preset (measured: predicts only background), while the BN variant with the same
topology does. The smoke tables say when it is on.

:class:`ConvFC` is fc6 → ReLU → Dropout → fc7 → ReLU → Dropout. Its ``load_imagenet`` copies
the ImageNet fc6/fc7 in and, when the layer is smaller, subsamples them as DeepLab v1 Sec. 4.1
describes for its 3×3 (or 4×4) × 1024 fc6 and 1024 fc7 (the reference LargeFOV prototxt starts
from such a converted model; which filters it kept is not published): every
``4096 // channels``-th filter is kept (fc7 subsampled on its input channels too), and the 7×7
kernel is decimated to ``kernel_size`` taps at spacing ``6 // (kernel_size - 1)`` — for a 3×3
kernel, taps 0, 3, 6, i.e. the 7×7 filter sampled at dilation 3.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from models.blocks import scale_channels
from models.pretrained import PretrainedArg, load_matching, load_timm_state_dict

TIMM_NAME = "vgg16.tv_in1k"
TIMM_NAME_BN = "vgg16_bn.tv_in1k"


def timm_name(batch_norm: bool = False) -> str:
    """The timm ImageNet weights of VGG16 (``batch_norm=True``: VGG16-BN, timm's ``vgg16_bn``)."""
    return TIMM_NAME_BN if batch_norm else TIMM_NAME
# Channels of the 13 convs, stage by stage (VGG configuration D); a pool closes each stage.
STAGES: tuple[tuple[int, ...], ...] = (
    (64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512),
)
IMAGENET_FC = 4096
IMAGENET_FC6_KERNEL = 7


class ConvFC(nn.Sequential):
    """VGG's fc6/fc7 as convolutions (FCN Sec. 3.1), named ``fc1``/``fc2`` as timm does."""

    def __init__(
        self,
        in_channels: int,
        channels: int = IMAGENET_FC,
        kernel_size: int = IMAGENET_FC6_KERNEL,
        dilation: int = 1,
        padding: int = 0,
        dropout: float = 0.5,
    ) -> None:
        super().__init__(OrderedDict(
            fc1=nn.Conv2d(in_channels, channels, kernel_size, padding=padding, dilation=dilation),
            act1=nn.ReLU(inplace=True),
            drop1=nn.Dropout(dropout),
            fc2=nn.Conv2d(channels, channels, 1),
            act2=nn.ReLU(inplace=True),
            drop2=nn.Dropout(dropout),
        ))

    def load_imagenet(self, state: dict[str, torch.Tensor], prefix: str = "pre_logits.") -> None:
        """Copy ImageNet fc6/fc7 from a timm ``vgg16`` state dict, subsampled to this shape."""
        step = _step(IMAGENET_FC, self.fc1.out_channels)
        taps = _kernel_taps(self.fc1.kernel_size[0])
        # slices, not index tensors: views of the 400 MB fc6, copied once by load_state_dict
        subsampled = {
            "fc1.weight": state[prefix + "fc1.weight"][::step, :, taps, taps],
            "fc1.bias": state[prefix + "fc1.bias"][::step],
            "fc2.weight": state[prefix + "fc2.weight"][::step, ::step],
            "fc2.bias": state[prefix + "fc2.bias"][::step],
        }
        load_matching(self, subsampled, f"ImageNet VGG16 {prefix}fc1/fc2")


def _step(total: int, kept: int) -> int:
    if total % kept:
        raise ValueError(f"cannot subsample {total} ImageNet fc filters to {kept}: not a divisor")
    return total // kept


def _kernel_taps(kernel_size: int) -> slice:
    """Evenly spaced taps spanning the 7×7 fc6 kernel (the centre tap for a 1×1 kernel)."""
    span = IMAGENET_FC6_KERNEL - 1
    if kernel_size == 1:
        return slice(span // 2, span // 2 + 1)
    if span % (kernel_size - 1):
        raise ValueError(f"cannot decimate the 7x7 ImageNet fc6 kernel to {kernel_size}x"
                         f"{kernel_size}: 6 is not a multiple of {kernel_size - 1}")
    return slice(0, IMAGENET_FC6_KERNEL, span // (kernel_size - 1))


class VGG16(nn.Module):
    """conv1_1 … pool5 as ``features`` (timm's indices) plus, optionally, fc6/fc7 as ``pre_logits``.

    ``forward`` returns ``{"pool3", "pool4", "pool5"}`` and ``"fc7"`` when ``include_fc``;
    ``channels`` and ``stage_strides`` map the same keys to their widths and strides.
    """

    def __init__(
        self,
        width: float = 1.0,
        dilated: bool = False,
        first_padding: int = 1,
        include_fc: bool = True,
        fc_channels: int = IMAGENET_FC,
        fc6_kernel_size: int = IMAGENET_FC6_KERNEL,
        fc6_dilation: int = 1,
        fc6_padding: int = 0,
        dropout: float = 0.5,
        pretrained: PretrainedArg = False,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.timm_name = timm_name(batch_norm)
        state = load_timm_state_dict(pretrained, self.timm_name, width)  # fail fast, before allocating
        layers: list[nn.Module] = []
        self._returned: dict[int, str] = {}  # index in ``features`` -> name of the output
        in_ch = 3
        for stage, widths in enumerate(STAGES, start=1):
            rate = 2 if dilated and stage == 5 else 1
            for out_ch in (scale_channels(c, width) for c in widths):
                pad = first_padding if not layers else rate
                conv = nn.Conv2d(in_ch, out_ch, 3, padding=pad, dilation=rate)
                norm = [nn.BatchNorm2d(out_ch)] if batch_norm else []
                layers += [conv, *norm, nn.ReLU(inplace=True)]
                in_ch = out_ch
            layers.append(_pool(stage, dilated))
            if stage >= 3:
                self._returned[len(layers) - 1] = f"pool{stage}"
        self.features = nn.Sequential(*layers)
        self.channels = {f"pool{s}": scale_channels(STAGES[s - 1][-1], width) for s in (3, 4, 5)}
        self.pre_logits: ConvFC | None = None
        if include_fc:
            fc = scale_channels(fc_channels, width)
            self.pre_logits = ConvFC(in_ch, fc, fc6_kernel_size, fc6_dilation, fc6_padding, dropout)
            self.channels["fc7"] = fc
        self.output_stride = 8 if dilated else 32
        self.stage_strides = {name: min(2 ** int(name[4:]), self.output_stride)
                              for name in self.channels if name.startswith("pool")}
        if include_fc:
            self.stage_strides["fc7"] = self.output_stride
        self.load_imagenet(state, pretrained)

    def load_imagenet(self, state: dict[str, torch.Tensor] | None, source: object = True) -> None:
        """Load a timm ``vgg16`` state dict (``source``: the ``pretrained`` it came from): the
        convs strictly by name, fc6/fc7 (when present) subsampled if smaller."""
        if state is None:
            return
        source = self.timm_name if source is True else str(source)
        prefix = "features."
        convs = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        load_matching(self.features, convs, source)
        if self.pre_logits is not None:
            self.pre_logits.load_imagenet(state)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats: dict[str, torch.Tensor] = {}
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self._returned:
                feats[self._returned[index]] = x
        if self.pre_logits is not None:
            feats["fc7"] = self.pre_logits(x)
        return feats


def _pool(stage: int, dilated: bool) -> nn.MaxPool2d:
    if not dilated:
        return nn.MaxPool2d(2, stride=2, ceil_mode=True)
    # DeepLab: 3×3 pools with padding 1; pool4 and pool5 keep the resolution (stride 1). Floor
    # rounding gives ceil(H / 2) per pool, Caffe's size for the odd crops DeepLab trains and
    # tests on (321 -> 161 -> 81 -> 41, 513 -> 65); Caffe's ceil would add a row for even H.
    return nn.MaxPool2d(3, stride=2 if stage <= 3 else 1, padding=1)
