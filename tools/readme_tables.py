"""Regenerate the generated sections of README.md (between ``<!-- BEGIN name -->`` and
``<!-- END name -->`` markers), so no number in the README is typed by hand.

- ``models``: every model name with its paper, knobs and parameter count at 21 classes,
  counted on the meta device (no memory, no weights).
- ``results-*``: the ``results.md`` files that the experiment scripts wrote under ``results/``
  (see ``RESULT_SECTIONS``; run the scripts first), each results table followed by its computed
  claims table (``claims.md``, ``experiments/claims.py``), with their main figures copied to
  ``docs/figures/`` (committed, so the README shows them without the results folder).
- ``recipes-<ablation>``: the paper preset's recipe beside the paper's values and sources
  (``experiments.recipe_table``; built from the recipe cards, no data and no weights read).
- ``receptive-fields``: the table and ERF maps of ``python -m tools.receptive_field``, and the
  RoIPool/RoIAlign figure of ``python -m tools.roi_quantisation``.

    python tools/readme_tables.py            # rewrite README.md in place
    python tools/readme_tables.py --check    # exit 1 if README.md is out of date
    python tools/readme_tables.py --only recipes   # only the sections whose names start so
                                                   # (e.g. without a results/ folder here)
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name, kwargs, paper, knobs shown
MODEL_ROWS = [
    ("fcn32s", {}, "FCN (Long et al. CVPR'15)", "`upsampling`='transposed' (or resize_conv, bilinear), `paper_padding`"),
    ("fcn16s", {}, "FCN", "skip from pool4"),
    ("fcn8s", {}, "FCN", "skips from pool4, pool3"),
    ("deeplab_largefov", {}, "DeepLab v1 (ICLR'15)", "`fc6_dilation`=12, `fc_channels`=1024"),
    ("deeplab_v2", {"backbone": "vgg16", "atrous_rates": (2, 4, 8, 12)}, "DeepLab v2 (TPAMI'17)",
     "ASPP-S `atrous_rates`=(2,4,8,12), VGG16"),
    ("deeplab_v2", {"backbone": "vgg16"}, "DeepLab v2", "ASPP-L (6,12,18,24), VGG16"),
    ("deeplab_v2", {"backbone": "resnet101"}, "DeepLab v2", "ASPP-L, ResNet-101; `msc_scales`=(1, 0.75, 0.5) "
     "for multi-scale-input training (Table 4)"),
    ("deeplab_v3", {}, "DeepLab v3 (2017)", "`output_stride`=16 (`set_output_stride(8)` to evaluate at 8), "
     "`atrous_rates`, `multi_grid`=(1,2,4), `image_pooling`"),
    ("deeplab_v3_cascade", {}, "DeepLab v3 Sec. 3.1–3.2 (Tables 1–3)", "ResNet-50 + cascaded copies of block4: "
     "`num_blocks`=7 (4–7), `output_stride`=16 (8–256), `multi_grid`=(1,1,1)"),
    ("deeplab_v3plus", {}, "DeepLab v3+ (ECCV'18)", "Xception-65 (`set_output_stride(8)` too), "
     "`low_level_channels`=48, `decoder_convs`=2, `decoder_channels`=256, `decoder_kernel_size`=3, "
     "`low_level_features`=(\"conv2\",) (or (\"conv3\", \"conv2\")), `separable`"),
    ("deeplab_v3plus", {"backbone": "resnet101"}, "DeepLab v3+", "ResNet-101 backbone"),
    ("pspnet", {}, "PSPNet (CVPR'17)", "ResNet-50, `bins`=(1,2,3,6), `pooling`, `reduction`, aux head"),
    ("unet", {}, "U-Net (MICCAI'15)", "`padding`='valid' (or same), `upsampling`='transposed' (or resize_conv, "
     "bilinear), `base_channels`=64, `dropout`=0.5"),
    ("mask_rcnn", {}, "Mask R-CNN (ICCV'17)", "ResNet-50-FPN, `roi_layer`='RoIAlign' (or RoIPool, RoIWarp), "
     "`roi_aggregation` (None: the layer's own; 'max'/'avg'), `sampling_ratio`=2, `aligned`=False"),
]


# README marker -> (ablation, results/<ablation>/<dataset>[, the table of a non-default option:
# results-table-2.md]) of the generated results tables
RESULT_SECTIONS = [
    ("results-aspp", "aspp", "synthetic_multiscale-smoke"),
    ("results-fcn_skip", "fcn_skip", "synthetic_thin-smoke"),
    ("results-psp_bins", "psp_bins", "synthetic_context_tokens-smoke"),
    # the earlier design of the context task (scene only in a border frame), at 128 and 192 px
    ("results-psp_bins-frame", "psp_bins", "synthetic_context-smoke"),
    ("results-psp_bins-192", "psp_bins", "synthetic_context192px-smoke"),
    ("results-psp_aux_depth", "psp_aux_depth", "synthetic_context_tokens-smoke"),
    ("results-psp_aux_depth-table-3", "psp_aux_depth", "synthetic_context_tokens-smoke", "-table-3"),
    # the feature-map-size check of the ASPP smoke result: ASPP-S vs ASPP-L at 320 px
    ("results-aspp-320", "aspp", "synthetic_multiscale320px-smoke"),
    ("results-deeplab_v1", "deeplab_v1", "synthetic_multiscale-smoke"),
    ("results-deeplab_v2_schedule", "deeplab_v2_schedule", "synthetic_multiscale-smoke"),
    ("results-deeplabv3", "deeplabv3", "synthetic_multiscale-smoke"),
    ("results-deeplabv3plus", "deeplabv3plus", "synthetic_thin-smoke"),
    ("results-deeplabv3plus_decoder", "deeplabv3plus_decoder", "synthetic_thin-smoke"),
    ("results-deeplabv3plus_decoder-table-2", "deeplabv3plus_decoder", "synthetic_thin-smoke", "-table-2"),
    ("results-deeplabv3_os", "deeplabv3_os", "synthetic_multiscale-smoke"),
    ("results-deeplabv3_os-table-2", "deeplabv3_os", "synthetic_multiscale-smoke", "-table-2"),
    ("results-deeplabv3_os-table-3", "deeplabv3_os", "synthetic_multiscale-smoke", "-table-3"),
    ("results-crf", "crf", "synthetic_multiscale-smoke"),
    ("results-upsampling", "upsampling", "synthetic_thin-smoke"),
    ("results-unet", "unet", "synthetic_touching-smoke"),
    ("results-roi_align", "roi_align", "synthetic_instances-smoke"),
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


FIGURES = ROOT / "docs" / "figures"
# figures of a results folder shown in the README: the primary metric's bar chart, the predictions
CHECK_ONLY = False  # --check: compare only, write nothing
SHOWN = ("bar_miou.png", "bar_trimap_miou.png", "bar_checkerboard.png", "bar_mask_ap.png", "predictions.png")


def copy_figure(src: Path, name: str) -> str:
    """Copy a generated figure into docs/figures (committed) and return its README link."""
    dst = FIGURES / name
    if not CHECK_ONLY:
        FIGURES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    return f"![{src.stem}]({dst.relative_to(ROOT)})"


def results_section(ablation: str, dataset: str, table: str = "") -> str:
    """``table``: the runner's suffix of a non-default option's table (``-table-2``)."""
    folder = ROOT / "results" / ablation / dataset
    path = folder / f"results{table}.md"
    if not path.exists():
        return f"_Not generated yet: run the script, then `python tools/readme_tables.py` ({path} missing)._"
    text = path.read_text().strip()
    claims = folder / f"claims{table}.md"
    if claims.exists() and "## Claims" not in text:  # a results.md written before the claims table
        text += "\n\n" + claims.read_text().strip()
    # one level below the README's "## Results" (results_crf adds a second table to the file)
    text = "\n".join("##" + line if line.startswith("## ") else line for line in text.splitlines())
    figures = folder / f"figures{table}"
    links = [copy_figure(figures / f, f"{ablation}-{dataset}{table}-{f}") for f in SHOWN if (figures / f).exists()]
    return text + ("\n\n" + " ".join(links) if links else "")


def receptive_fields_section() -> str:
    folder = ROOT / "results" / "receptive_fields"
    if not (folder / "receptive_fields.md").exists():
        return ("_Not generated yet: `python -m tools.receptive_field --out results/receptive_fields "
                "--checkpoints results/psp_bins`, then `python tools/readme_tables.py`._")
    text = (folder / "receptive_fields.md").read_text().strip()
    text = "\n".join("###" + line if line.startswith("#") else line for line in text.splitlines())
    links = [copy_figure(f, f"receptive_fields-{f.name}") for f in sorted(folder.glob("*.png"))]
    roi = ROOT / "results" / "figures" / "roi_quantisation.png"
    if roi.exists():
        links.append(copy_figure(roi, "roi_quantisation.png"))
    return text + ("\n\n" + " ".join(links) if links else "")


RECIPE_SECTIONS = ["fcn_skip", "aspp", "crf", "deeplab_v1", "deeplab_v2_schedule", "deeplabv3", "deeplabv3_os",
                   "deeplabv3plus", "deeplabv3plus_decoder", "psp_bins", "psp_aux_depth", "unet", "upsampling",
                   "roi_align"]


def recipes_section(name: str) -> str:
    import importlib.util

    from experiments.recipe_table import render_recipe_table

    script = ROOT / "experiments" / f"{name}_ablation.py"
    spec = importlib.util.spec_from_file_location(f"{name}_ablation", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return render_recipe_table(module.ABLATION)


def render(readme: str, only: list[str] | None = None) -> str:
    sections = {"models": models_table, "receptive-fields": receptive_fields_section}
    for name in RECIPE_SECTIONS:
        sections[f"recipes-{name}"] = lambda n=name: recipes_section(n)
    for marker, ablation, dataset, *table in RESULT_SECTIONS:
        sections[marker] = lambda a=ablation, d=dataset, t=table: results_section(a, d, *t)
    for name, make in sections.items():
        if only and not any(name.startswith(prefix) for prefix in only):
            continue
        pattern = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.S)
        if not pattern.search(readme):
            raise SystemExit(f"README.md has no <!-- BEGIN {name} --> ... <!-- END {name} --> section")
        readme = pattern.sub(lambda m: m.group(1) + make().rstrip("\n") + "\n" + m.group(2), readme)
    return readme


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--only", nargs="+", metavar="PREFIX", help="regenerate only these sections (name prefixes)")
    args = parser.parse_args()
    global CHECK_ONLY
    CHECK_ONLY = args.check
    path = ROOT / "README.md"
    old = path.read_text()
    new = render(old, args.only)
    if args.check:
        return 0 if new == old else 1
    path.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
