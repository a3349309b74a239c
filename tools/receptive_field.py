"""Theoretical and effective receptive fields of the model zoo.

The lectures' receptive-field argument, measured: PSPNet (Zhao et al., CVPR'17, Sec. 3.1)
observes that "the empirical receptive field of CNN is much smaller than the theoretical one
especially on high-level layers" and answers with global pyramid pooling; DeepLab's atrous rates
(v1 Sec. 3.1, v2 Sec. 3.1) exist to enlarge the field of view without adding parameters.

The measurements live in two modules; import them from there:

- :mod:`tools.rf_theory` — the **theoretical receptive field** (RF), the input pixels a unit
  depends on at all: :func:`~tools.rf_theory.stack_receptive_field` (textbook arithmetic over a
  sequential stack) and :func:`~tools.rf_theory.model_receptive_field` (exact for any model,
  via the gradient support of a linearised copy), the output stride, and why DeepLab v1's
  Table 2 says 224 for LargeFOV.
- :mod:`tools.rf_effective` — the **effective receptive field** (ERF, Luo et al., NeurIPS
  2016): :func:`~tools.rf_effective.effective_receptive_field`, the mean ``|∂y_centre/∂x|``
  map and the side of the centred square holding 95 % of it;
  :func:`~tools.rf_effective.load_lightning_weights` for trained weights.

This module holds the study below: the model list, the table, the ERF maps and the CLI.

Caveats:

- Random initialisation is not training. Luo et al. (Sec. 4.2, Fig. 3) find the ERF *grows*
  during training, and trained weights are what matter for a task; pass ``--checkpoints`` to
  measure trained models too. At random init the study re-draws layers that are initialised
  to exactly zero, which would otherwise make the gradient vanish or skip a branch: FCN's
  zero-initialised score layers (torch's default conv init instead) and timm's ``zero_init_last`` (the
  last BatchNorm γ of every ResNet bottleneck is 0, so at init each residual branch is off and
  a ResNet is its shortcut path; γ = 1 instead). Without that, a fresh ResNet's ERF is that of
  its stem and 1×1 shortcuts.
- The ERF depends on the inputs (ReLU masks) and on the input size: a field larger than the
  input is cut at the border (flagged "input-limited"), and zero padding changes the statistics
  near it. With BatchNorm in eval mode at random init (running mean 0, variance 1) BN is the
  identity, which is not what a from-scratch network trains with.
- The 95 % square is one summary; Luo et al. describe the ERF as roughly Gaussian, so it has
  no hard edge. The maps are written on a log scale to show the tails.

Study (``python -m tools.receptive_field --out DIR``): FCN-32s, FCN-8s, DeepLab LargeFOV, ASPP-S,
ASPP-L (DeepLab v2, VGG16) and PSPNet ResNet-50 with bins (1, 2, 3, 6) and without pyramid
(``bins=()``), built by :func:`models.build_model` with random weights. It writes
``DIR/receptive_fields.md`` (table) and ``DIR/erf_maps.png`` (log-scale ERF maps; red square =
theoretical RF, white dashed = ERF 95 %). Defaults: ``--size 256 --width 0.125 --inputs 4
--inits 2`` (ERF at 256 px, channel width 1/8, 4 random inputs for each of 2 initialisations);
the theoretical RF runs on a width-1/32 copy of each architecture (the support does not depend
on the channel counts). 70-100 s on 2 CPU cores (measured on a shared 2-core machine; 35-50 s
of CPU time).
``--checkpoints RESULTS_DIR`` adds the trained runs found under it (``*/config.json`` +
``checkpoints/last.ckpt``, seeds averaged), on validation images of their synthetic task at
their training size::

    python -m tools.receptive_field --out /tmp/rf
    python -m tools.receptive_field --out /tmp/rf --checkpoints results/psp_bins
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # also runnable as ``python tools/receptive_field.py``
    sys.path.insert(0, str(ROOT))

from tools.rf_effective import (  # noqa: E402 - after the sys.path line above
    ERF,
    effective_receptive_field,
    load_lightning_weights,
)
from tools.rf_theory import ModelRF, model_receptive_field  # noqa: E402


# --------------------------------------------------------------------------- the study
# name, build_model name, kwargs (the papers' variants; see README "Models")
STUDY: list[tuple[str, str, dict]] = [
    ("FCN-32s", "fcn32s", {}),
    ("FCN-8s", "fcn8s", {}),
    ("DeepLab LargeFOV", "deeplab_largefov", {}),
    ("ASPP-S (2,4,8,12)", "deeplab_v2", {"backbone": "vgg16", "atrous_rates": (2, 4, 8, 12)}),
    ("ASPP-L (6,12,18,24)", "deeplab_v2", {"backbone": "vgg16", "atrous_rates": (6, 12, 18, 24)}),
    ("PSPNet R50 B1236", "pspnet", {"backbone": "resnet50", "bins": (1, 2, 3, 6)}),
    ("PSPNet R50 no pyramid", "pspnet", {"backbone": "resnet50", "bins": ()}),
]
RF_WIDTH = 1 / 32  # channel width of the copy the theoretical RF is computed on
STUDY_CLASSES = 21


@dataclass
class StudyRow:
    name: str
    theoretical: ModelRF
    erf: ERF
    input_size: int
    source: str  # "random init (n inits)" or the trained run

    @property
    def ratio(self) -> float:
        """ERF side / theoretical RF side (/ input side when the RF is global)."""
        return self.erf.side / (self.input_size if self.theoretical.is_global else self.theoretical.rf)


def _tuples(kwargs: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def theoretical_rf(name: str, kwargs: dict, num_classes: int = STUDY_CLASSES) -> ModelRF:
    """:func:`model_receptive_field` of architecture ``name`` built at width 1/32."""
    from models import build_model

    kwargs = {**_tuples(kwargs), "width": RF_WIDTH, "pretrained": False}
    # start at 512 px: the fields here are 400-650 px, so fewer doublings to reach them
    return model_receptive_field(build_model(name, num_classes, **kwargs), input_size=512)


def study_random_init(size: int = 256, width: float = 0.125, n_inputs: int = 4, n_inits: int = 2,
                      seed: int = 0, study=STUDY, log=print) -> list[StudyRow]:
    """Theoretical RF and random-init ERF of every entry of ``study``."""
    from models import build_model

    rows = []
    for name, model_name, kwargs in study:
        start = time.perf_counter()

        def factory(model_name=model_name, kwargs=kwargs):
            return build_model(model_name, STUDY_CLASSES, width=width, pretrained=False, **kwargs)

        rf = theoretical_rf(model_name, kwargs)
        erf = effective_receptive_field(factory, size, n_inputs, n_inits, seed)
        rows.append(StudyRow(name, rf, erf, size, f"random init ({n_inits})"))
        log(f"{name}: RF {rf.label}, ERF95 {erf.side} px ({time.perf_counter() - start:.1f} s)")
    return rows


def find_runs(results_dir: str | Path) -> dict[str, list[Path]]:
    """Run folders (``config.json`` + ``checkpoints/last.ckpt``) grouped by ablation/dataset/variant."""
    groups: dict[str, list[Path]] = {}
    for cfg in sorted(Path(results_dir).rglob("config.json")):
        if (cfg.parent / "checkpoints" / "last.ckpt").is_file():
            c = json.loads(cfg.read_text())["card"]
            groups.setdefault(f"{c['ablation']}/{c['dataset']}/{c['variant']}", []).append(cfg.parent)
    return groups


def load_run(run_dir: str | Path, checkpoint: str = "last.ckpt"):
    """(model with the run's trained weights, its config.json, the module's hyper-parameters)."""
    from models import build_model

    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    ckpt_path = run_dir / "checkpoints" / checkpoint
    hparams = torch.load(ckpt_path, map_location="cpu", weights_only=True)["hyper_parameters"]
    card = config["card"]
    model = build_model(card["model"], int(hparams["num_classes"]), **model_kwargs(card))
    return load_lightning_weights(model, ckpt_path), config, hparams


def model_kwargs(card: dict) -> dict:
    """A run's model arguments from its recipe card (no weights loaded: they come from the run)."""
    return {**_tuples(card["model_kwargs"]), "width": card["width"], "pretrained": False}


def task_images(data_source: dict, image_size: int, n: int, mean: Sequence[float],
                std: Sequence[float], seed: int = 0) -> torch.Tensor | None:
    """``n`` normalised validation images of a run's synthetic task (``data_source``: the run's
    ``config["card"]["data_source"]``); None for real datasets (random inputs are used)."""
    from datamodules.synthetic import SYNTHETIC_TASKS

    task = data_source["synthetic_task"]
    if data_source["kind"] != "synthetic" or task not in SYNTHETIC_TASKS:
        return None
    data = SYNTHETIC_TASKS[task]("val", n, image_size, seed)
    images = torch.stack([data[i][0] for i in range(n)]).float() / 255
    return (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def study_trained(results_dir: str | Path, n_inputs: int = 4, log=print) -> list[StudyRow]:
    """ERF of every trained run under ``results_dir`` (seeds averaged), on its task's images."""
    rows = []
    for key, runs in find_runs(results_dir).items():
        start = time.perf_counter()
        loaded = [load_run(r) for r in runs]
        config, hparams = loaded[0][1], loaded[0][2]
        card = config["card"]
        size = int(card["image_size"])
        images = task_images(card["data_source"], size, n_inputs, hparams["mean"], hparams["std"])
        erf = effective_receptive_field([m for m, _, _ in loaded], size, n_inputs, inputs=images)
        rf = theoretical_rf(card["model"], model_kwargs(card), int(hparams["num_classes"]))
        inputs = "task images" if images is not None else "random inputs"
        seeds = f"{len(runs)} seed" + ("s" if len(runs) > 1 else "")
        rows.append(StudyRow(key, rf, erf, size, f"trained ({seeds}, {inputs})"))
        log(f"{key}: RF {rf.label}, ERF95 {erf.side} px ({time.perf_counter() - start:.1f} s)")
    return rows


def markdown_table(rows: Sequence[StudyRow]) -> str:
    lines = [
        "| model | weights | input (px) | output stride (declared / measured) | theoretical RF (px) "
        "| ERF 95 % side (px) | ERF 95 % radius (px) | ERF / theoretical RF |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        t, e = row.theoretical, row.erf
        erf = f"{e.side}" + (" (input-limited)" if e.limited_by_input else "")
        ratio = f"{row.ratio:.2f}"
        if t.is_global:
            ratio += " of the input"
        elif t.rf > row.input_size:  # the ERF cannot exceed the input it is measured on
            ratio += f" (at most {row.input_size / t.rf:.2f}: RF > input)"
        lines.append(f"| {row.name} | {row.source} | {row.input_size} | {t.declared_stride} / "
                     f"{t.measured_stride} | {t.label} | {erf} | {e.radius} | {ratio} |")
    return "\n".join(lines)


def plot_maps(rows: Sequence[StudyRow], path: str | Path | None = None, decades: float = 4.0):
    """Grid of log10 ERF maps (red = theoretical RF, white dashed = ERF 95 % square), saved to
    ``path`` (then closed) or returned as a matplotlib figure."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    cols = min(4, len(rows))
    nrows = math.ceil(len(rows) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat[len(rows):]:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows):
        m = np.log10(row.erf.map / row.erf.map.max() + 1e-30)
        im = ax.imshow(m, cmap="magma", vmin=-decades, vmax=0)
        for spine in ax.spines.values():  # let the RF square show at the panel's edge
            spine.set_visible(False)
        cy, cx = row.erf.centre
        h, w = m.shape
        if not row.theoretical.is_global:
            half = row.theoretical.rf / 2
            ax.add_patch(Rectangle((cx - half, cy - half), 2 * half, 2 * half, fill=False,
                                   edgecolor="red", linewidth=1.5))
        r = row.erf.radius + 0.5
        ax.add_patch(Rectangle((cx - r, cy - r), 2 * r, 2 * r, fill=False, edgecolor="white",
                               linestyle="--", linewidth=1.2))
        # show the whole theoretical RF square even where it is larger than the input
        reach = max(cy + 0.5, cx + 0.5, h - cy - 0.5, w - cx - 0.5,
                    0 if row.theoretical.is_global else row.theoretical.rf / 2) + 2
        ax.set_xlim(cx - reach, cx + reach)
        ax.set_ylim(cy + reach, cy - reach)
        ax.add_patch(Rectangle((-0.5, -0.5), w, h, fill=False, edgecolor="grey", linewidth=0.8))
        # trained rows are named <ablation>/<dataset>/<variant>: the variant and dataset fit a title
        parts = row.name.split("/")
        name = f"{parts[-1]} (trained)\n{parts[-2].replace('synthetic_', '')}" if len(parts) == 3 else row.name
        ax.set_title(f"{name}\nRF {row.theoretical.label}, ERF95 {row.erf.side}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="log10 (|grad| / its maximum)")
    fig.suptitle("ERF maps (grey: input; red: theoretical RF; white dashed: 95 % of the gradient)",
                 fontsize=9)
    if path is None:
        return fig
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write_report(rows: Sequence[StudyRow], out: str | Path, settings: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot_maps(rows, out / "erf_maps.png")
    text = (
        "# Theoretical vs effective receptive fields\n\n"
        f"Generated by `python -m tools.receptive_field` ({settings}); definitions and caveats "
        "in the module docstring of `tools/receptive_field.py`.\n\n"
        + markdown_table(rows) + "\n\n"
        "- Theoretical RF: side of the bounding box of the pixels the logits' centre pixel "
        "depends on (exact, via a linearised copy); \"global\" = the whole input at any size "
        "(global pooling). It includes the final bilinear upsampling (+1 feature cell).\n"
        "- ERF 95 %: side 2r+1 of the smallest square centred on that pixel holding 95 % of the "
        "mean |gradient| (Luo et al., NeurIPS 2016); radius r in pixels. \"input-limited\": the "
        "square reached the image border.\n"
        "- Random init: zero-initialised layers (FCN score layers, timm's zero-init-last BN γ) "
        "re-drawn; Luo et al. find the ERF grows with training.\n"
        "- Maps: `erf_maps.png` (log10 of |grad| / its maximum over 4 decades; grey = input, red = "
        "theoretical RF, white dashed = ERF 95 %).\n"
    )
    (out / "receptive_fields.md").write_text(text)
    return out / "receptive_fields.md"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for receptive_fields.md and erf_maps.png")
    parser.add_argument("--size", type=int, default=256, help="ERF input side in pixels")
    parser.add_argument("--width", type=float, default=0.125, help="channel width of the ERF models")
    parser.add_argument("--inputs", type=int, default=4, help="random inputs per initialisation")
    parser.add_argument("--inits", type=int, default=2, help="random initialisations per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoints", help="results folder: also measure its trained runs")
    parser.add_argument("--models", nargs="+", choices=[name for name, _, _ in STUDY],
                        help="a subset of the study (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    study = [entry for entry in STUDY if not args.models or entry[0] in args.models]
    rows = study_random_init(args.size, args.width, args.inputs, args.inits, args.seed, study)
    if args.checkpoints:
        rows += study_trained(args.checkpoints, args.inputs)
    settings = (f"--size {args.size} --width {args.width} --inputs {args.inputs} --inits "
                f"{args.inits} --seed {args.seed}"
                + (f" --checkpoints {args.checkpoints}" if args.checkpoints else ""))
    report = write_report(rows, args.out, settings)
    print(report.read_text())
    print(f"wrote {report} and {report.parent / 'erf_maps.png'} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
