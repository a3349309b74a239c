"""Synthetic, procedural segmentation tasks that each isolate ONE architectural property.

No real dataset can be downloaded on the development machines, so the ablations of
FCN (Long et al., CVPR'15, Table 2: 32s vs 16s vs 8s skips), DeepLab v2 (TPAMI'17, Table 3:
LargeFOV vs ASPP-S vs ASPP-L), PSPNet (CVPR'17, Table 1 and the "boat vs car" mismatched
relationship of Sec. 1 / Fig. 2), U-Net (MICCAI'15, Eq. 2) and Mask R-CNN (ICCV'17, Table 2c)
run first on small tasks where the property each paper argues for decides the score (the
dataset class docstrings say why; the file of each in brackets):

- ``thin`` (``thin.py``): FCN-32s vs 16s vs 8s; 1-3 px lines whose class is a local colour.
- ``multiscale`` (``multiscale.py``): LargeFOV vs ASPP-S/L; shapes at radii 4 px .. 0.3 x size.
- ``context`` (``context.py``): PSPNet bins; the scene naming an object is seen only far away.
- ``context_tokens`` (``context.py``): PSPNet bins; the scene is a count over the whole image.
- ``touching`` (``touching.py``): U-Net padding / Eq. 2 weights; cells split by 1-2 px borders.
- instance task (``instances.py``): Mask R-CNN RoIPool vs RoIAlign; thin stars, rings and arcs.

The five semantic tasks are :class:`SyntheticSegmentation` subclasses, looked up by name in
``SYNTHETIC_TASKS`` (the one table of them) and served by ``SyntheticDataModule(task=...)``.
The instance task, :class:`~datamodules.synthetic.instances.SyntheticInstances`, has its own
item format and is served by :mod:`datamodules.instance`; it is not imported here.

Every item ``i`` of split ``s`` is drawn from ``numpy.random.default_rng(SeedSequence((task_id,
seed, s, i)))``, so it is the same in every process, worker and run, and generated on the fly
(about 1-2 ms for 128 x 128). Items are ``(uint8 3 x H x W tensor, int64 H x W mask)`` with
``IGNORE_INDEX`` (255) on a band just *outside* each object, like VOC's void outlines but
never eating a thin or small object (VOC's band straddles the contour and would erase a 2 px
line). Drawing is aliasing-free: a pixel is in an object exactly where its label says so.

``export_synthetic`` writes the same items in the real VOC 2012 or ADE20K on-disk layouts, so
the real-data loaders can be exercised end to end::

    python -m datamodules.synthetic export --task thin --layout voc --out data/synth_voc
"""

from datamodules.synthetic.base import SyntheticSegmentation
from datamodules.synthetic.context import ContextScenes, ContextTokens
from datamodules.synthetic.datamodule import SyntheticDataModule
from datamodules.synthetic.export import export_synthetic
from datamodules.synthetic.multiscale import MultiScaleShapes
from datamodules.synthetic.tasks import SYNTHETIC_TASKS
from datamodules.synthetic.thin import ThinStructures
from datamodules.synthetic.touching import TouchingCells

__all__ = [
    "SYNTHETIC_TASKS",
    "ContextScenes",
    "ContextTokens",
    "MultiScaleShapes",
    "SyntheticDataModule",
    "SyntheticSegmentation",
    "ThinStructures",
    "TouchingCells",
    "export_synthetic",
]
