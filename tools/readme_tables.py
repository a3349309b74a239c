"""Regenerate the generated sections of README.md (between ``<!-- BEGIN name -->`` and
``<!-- END name -->`` markers), so no number in the README is typed by hand.

- ``models``: every model name with its paper, knobs and parameter count at 21 classes,
  counted on the meta device (no memory, no weights).
- ``results-*``: the ``results.md`` files that the experiment scripts wrote under ``results/``
  (see ``RESULT_SECTIONS``; run the scripts first).

    python tools/readme_tables.py            # rewrite README.md in place
    python tools/readme_tables.py --check    # exit 1 if README.md is out of date
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name, kwargs, paper, knobs shown
MODEL_ROWS = [
    ("fcn32s", {}, "FCN (Long et al. CVPR'15)", "`learnable_upsampling`, `paper_padding`"),
    ("fcn16s", {}, "FCN", "skip from pool4"),
    ("fcn8s", {}, "FCN", "skips from pool4, pool3"),
    ("deeplab_largefov", {}, "DeepLab v1 (ICLR'15)", "`fc6_dilation`=12, `fc_channels`=1024"),
    ("deeplab_v2", {"backbone": "vgg16", "atrous_rates": (2, 4, 8, 12)}, "DeepLab v2 (TPAMI'17)",
     "ASPP-S `atrous_rates`=(2,4,8,12), VGG16"),
    ("deeplab_v2", {"backbone": "vgg16"}, "DeepLab v2", "ASPP-L (6,12,18,24), VGG16"),
    ("deeplab_v2", {"backbone": "resnet101"}, "DeepLab v2", "ASPP-L, ResNet-101"),
    ("deeplab_v3", {}, "DeepLab v3 (2017)", "`output_stride`=16, `atrous_rates`, `multi_grid`=(1,2,4), "
     "`image_pooling`"),
    ("deeplab_v3plus", {}, "DeepLab v3+ (ECCV'18)", "Xception-65, `low_level_channels`=48, "
     "`decoder_convs`=2, `separable`"),
    ("deeplab_v3plus", {"backbone": "resnet101"}, "DeepLab v3+", "ResNet-101 backbone"),
    ("pspnet", {}, "PSPNet (CVPR'17)", "ResNet-50, `bins`=(1,2,3,6), `pooling`, `reduction`, aux head"),
    ("unet", {}, "U-Net (MICCAI'15)", "`padding`='valid', `upsampling`, `base_channels`=64"),
]


# README marker -> (ablation, results/<ablation>/<dataset>) of the generated results tables
RESULT_SECTIONS = [
    ("results-aspp", "aspp", "synthetic_multiscale-smoke"),
    ("results-fcn_skip", "fcn_skip", "synthetic_thin-smoke"),
    ("results-psp_bins", "psp_bins", "synthetic_context-smoke"),
    # the receptive-field check of the PSPNet smoke result: the same task at 256 px
    ("results-psp_bins-256", "psp_bins", "synthetic_context256px-smoke"),
    # the feature-map-size check of the ASPP smoke result: ASPP-S vs ASPP-L at 320 px
    ("results-aspp-320", "aspp", "synthetic_multiscale320px-smoke"),
]


def models_table() -> str:
    import torch

    from models import build_model

    lines = ["| name | paper | key knobs (defaults = paper) | params (21 classes) |", "|---|---|---|---|"]
    for name, kwargs, paper, knobs in MODEL_ROWS:
        with torch.device("meta"):
            model = build_model(name, 21, **kwargs)
        params = sum(p.numel() for p in model.parameters())
        shown = f"`{name}`" + (f" ({', '.join(f'{k}={v}' for k, v in kwargs.items())})" if kwargs else "")
        lines.append(f"| {shown} | {paper} | {knobs} | {params / 1e6:.2f}M |")
    lines.append("")
    lines.append("Counts include auxiliary heads and fixed (non-trainable) bilinear deconvolutions; "
                 "`unet` is counted with 3 input channels.")
    return "\n".join(lines)


def results_section(ablation: str, dataset: str) -> str:
    path = ROOT / "results" / ablation / dataset / "results.md"
    if not path.exists():
        return f"_Not generated yet: run the script, then `python tools/readme_tables.py` ({path} missing)._"
    return path.read_text().strip().replace("## ", "#### ", 1)


def render(readme: str) -> str:
    sections = {"models": models_table}
    for marker, ablation, dataset in RESULT_SECTIONS:
        sections[marker] = lambda a=ablation, d=dataset: results_section(a, d)
    for name, make in sections.items():
        pattern = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.S)
        if not pattern.search(readme):
            raise SystemExit(f"README.md has no <!-- BEGIN {name} --> ... <!-- END {name} --> section")
        readme = pattern.sub(lambda m: m.group(1) + make().rstrip("\n") + "\n" + m.group(2), readme)
    return readme


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    path = ROOT / "README.md"
    old = path.read_text()
    new = render(old)
    if args.check:
        return 0 if new == old else 1
    path.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
