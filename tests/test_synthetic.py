"""Synthetic tasks: determinism, formats, the property each task isolates, export and CLI.

The property tests use non-learned oracles on the generated data, so they check the task
design itself: what a stride-s prediction can reach on "thin", that "multiscale" classes are
shapes spanning > 10x in size with class-free interiors, and that on "context" the scene
decides the class while the object's own pixels carry no information.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from datamodules.constants import IGNORE_INDEX
from datamodules.synthetic import (
    SYNTHETIC_TASKS,
    ContextScenes,
    MultiScaleShapes,
    SyntheticDataModule,
    ThinStructures,
    export_synthetic,
)
from datamodules.synthetic.export import main

REPO = Path(__file__).resolve().parents[1]
TASKS = sorted(SYNTHETIC_TASKS)
EIGHT = np.ones((3, 3), bool)  # 8-connectivity


def _masks(ds, n: int) -> np.ndarray:
    return np.stack([ds.generate(i)[1] for i in range(n)])


# --------------------------------------------------------------------------- all tasks
@pytest.mark.parametrize("task", TASKS)
def test_items_are_deterministic_per_seed_split_and_index(task):
    cls = SYNTHETIC_TASKS[task]
    a, b = cls("train", 3, 96, seed=0), cls("train", 3, 96, seed=0)
    for i in range(3):
        (ia, ma), (ib, mb) = a[i], b[i]
        assert ia.numpy().tobytes() == ib.numpy().tobytes()
        assert torch.equal(ma, mb)
    other_seed = cls("train", 3, a.image_size, seed=1)
    other_split = cls("val", 3, a.image_size, seed=0)
    assert not torch.equal(a[0][0], other_seed[0][0])
    assert not torch.equal(a[0][0], other_split[0][0])
    assert not torch.equal(a[0][0], a[1][0])
    with pytest.raises(IndexError):
        a[3]


@pytest.mark.parametrize("task", TASKS)
def test_items_types_labels_and_void_band(task):
    cls = SYNTHETIC_TASKS[task]
    ds = cls("train", 16)
    s = cls.default_image_size
    img, mask = ds[0]
    assert img.dtype == torch.uint8 and img.shape == (3, s, s)
    assert mask.dtype == torch.int64 and mask.shape == (s, s)
    assert len(cls.palette) == len(cls.class_names) == ds.num_classes
    masks = _masks(ds, 16)
    values = set(np.unique(masks).tolist())
    assert values <= set(range(ds.num_classes)) | {IGNORE_INDEX}
    assert values >= set(range(ds.num_classes)), "every class appears in 16 items"
    void = masks == IGNORE_INDEX
    assert 0.01 < void.mean() < 0.15
    # the void band lies just outside objects: every void pixel is within band_width of one
    scene_classes = {"context": (0, 1), "context_tokens": (0, 1)}.get(task, (0,))
    objects = ~np.isin(masks, scene_classes) & ~void
    reach = 2 * cls.band_width + 1
    near = ndimage.maximum_filter(objects.view(np.uint8), size=(1, reach, reach))
    assert near[void].astype(bool).all()
    # ... and it never swallows an object: the object pixels themselves stay labelled
    assert objects.mean() > 0.04
    if task != "thin":  # shapes lie entirely inside the image: none is clipped by the border
        border = np.ones(masks.shape[1:], bool)
        border[1:-1, 1:-1] = False
        assert not objects[:, border].any()


def test_unknown_task_and_split_are_named_errors():
    with pytest.raises(ValueError, match="'nope'.*'context', 'context_tokens', 'multiscale', "
                                         "'thin', 'touching'"):
        SyntheticDataModule(task="nope")
    with pytest.raises(ValueError, match="split"):
        ThinStructures("training", 3)
    with pytest.raises(ValueError, match="image_size"):
        MultiScaleShapes("train", 3, image_size=64)


@pytest.mark.parametrize("task", TASKS)
def test_datamodule_takes_classes_and_sizes_from_its_task(task):
    cls = SYNTHETIC_TASKS[task]
    dm = SyntheticDataModule(task=task, num_train=3, num_val=2, data_seed=4)
    assert dm.num_classes == len(cls.class_names) == cls("val", 1).num_classes
    assert dm.class_names == cls.class_names and dm.palette == cls.palette
    assert dm.image_size == dm.crop_size == cls.default_image_size
    dm.make_datasets("fit")
    for ds, split, n in ((dm.train_set, "train", 3), (dm.val_set, "val", 2)):
        assert type(ds) is cls and (ds.split, len(ds), ds.seed) == (split, n, 4)


# --------------------------------------------------------------------------- thin
def test_thin_foreground_is_thin_and_its_class_is_local_colour():
    ds = ThinStructures("val", 30)
    items = [ds.generate(i) for i in range(30)]
    imgs = np.stack([x[0] for x in items]).astype(np.float32) / 255
    masks = np.stack([x[1] for x in items])
    fg = (masks >= 1) & (masks <= 4)
    deep = ndimage.binary_erosion(fg, np.ones((1, 5, 5), bool))  # > 2 px from any non-object
    assert 1 - deep.sum() / fg.sum() > 0.9
    # a 3x3 mean colour's hue names the class: recognising needs no context at all
    px = ndimage.uniform_filter(imgs, size=(1, 3, 3, 1))[fg]
    r, g, b = px.T
    mx, d = px.max(1), np.ptp(px, axis=1) + 1e-6
    hue = np.where(mx == r, ((g - b) / d) % 6,
                   np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4)) / 6
    err = np.abs((hue[:, None] - np.array(ThinStructures._hues) + 0.5) % 1 - 0.5)
    assert (err.argmin(1) + 1 == masks[fg]).mean() > 0.95


def _best_stride_oracle_miou(masks: torch.Tensor, stride: int, num_classes: int) -> float:
    """Best mIoU of a stride-`stride` score map upsampled bilinearly, as FCN does: each cell
    scores 1 for every class present in it, background a constant tuned on the data."""
    valid = masks != IGNORE_INDEX
    onehot = F.one_hot(masks.clamp(max=num_classes - 1), num_classes).permute(0, 3, 1, 2).float()
    present = F.max_pool2d(onehot[:, 1:] * valid[:, None], stride)
    up = F.interpolate(present, scale_factor=stride, mode="bilinear", align_corners=False)
    score, cls = (t.numpy() for t in up.max(1))
    score, cls, target = score[valid], cls[valid] + 1, masks[valid].numpy()
    best = 0.0
    for t in np.linspace(0.05, 0.95, 10):
        pred = np.where(score > t, cls, 0)
        conf = np.bincount(target * num_classes + pred, minlength=num_classes**2)
        conf = conf.reshape(num_classes, num_classes)
        iou = np.diag(conf) / (conf.sum(0) + conf.sum(1) - np.diag(conf))
        best = max(best, iou.mean())
    return best


def test_thin_rewards_fine_output_stride():
    ds = ThinStructures("val", 24)
    masks = torch.from_numpy(_masks(ds, 24).astype(np.int64))
    miou = {s: _best_stride_oracle_miou(masks, s, 5) for s in (4, 8, 16, 32)}
    assert miou[4] > miou[8] > miou[16] > miou[32]
    assert miou[8] - miou[32] > 0.2, miou


# --------------------------------------------------------------------------- multiscale
def _components(ds, n):
    """(class, equivalent radius, compactness, mean colour) of every object in n items."""
    rows = []
    for i in range(n):
        img, mask = ds.generate(i)
        lab, _ = ndimage.label((mask >= 1) & (mask <= 3), EIGHT)
        for k, sl in enumerate(ndimage.find_objects(lab), 1):
            comp = lab[sl] == k
            yy, xx = np.nonzero(comp)
            rmax = np.sqrt(((yy - yy.mean()) ** 2 + (xx - xx.mean()) ** 2).max()) + 0.5
            cls = np.bincount(mask[sl][comp]).argmax()
            rows.append((cls, np.sqrt(comp.sum() / np.pi), comp.sum() / (np.pi * rmax**2),
                         *img[sl][comp].mean(0)))
    return np.array(rows)


def test_multiscale_same_classes_span_ten_fold_sizes():
    rows = _components(MultiScaleShapes("val", 50), 50)
    for c in (1, 2, 3):
        radius = rows[rows[:, 0] == c, 1]
        assert radius.min() <= 5, (c, radius.min())
        assert radius.max() / radius.min() >= 10, (c, radius.min(), radius.max())
    medians = [np.median(rows[rows[:, 0] == c, 1]) for c in (1, 2, 3)]
    assert max(medians) / min(medians) < 1.3  # size says nothing about the class


def test_multiscale_class_is_in_the_outline_not_the_interior():
    ds = MultiScaleShapes("val", 50)
    rows = _components(ds, 50)
    cls, compact, colour = rows[:, 0], rows[:, 2], rows[:, 3:]
    # the same colour distribution for every shape: per-object mean colours agree per class
    means = np.stack([colour[cls == c].mean(0) for c in (1, 2, 3)])
    assert np.ptp(means, axis=0).max() < 15
    # the outline decides: compactness (area / circumscribed disc) classifies even the smallest
    pred = np.where(compact > 0.765, 1, np.where(compact > 0.5, 2, 3))
    assert (pred == cls).mean() > 0.95
    assert (pred == cls)[rows[:, 1] < 6].mean() > 0.9
    # many object pixels lie > 8 px inside: a 17x17 field centred there sees no outline
    masks = _masks(ds, 20)
    obj = (masks >= 1) & (masks <= 3)
    depth = np.concatenate([ndimage.distance_transform_edt(o)[o] for o in obj])
    assert (depth > 8).mean() > 0.3
    assert np.percentile(depth, 90) / np.percentile(depth, 10) > 5  # and at every depth


# --------------------------------------------------------------------------- context
def test_context_interior_pixels_do_not_depend_on_the_scene():
    ds = ContextScenes("train", 8)
    f = ds.frame_width
    assert f == round(0.06 * ds.image_size)
    for i in range(8):
        (img_w, m_w), (img_r, m_r) = ds.render(i, scene=0), ds.render(i, scene=1)
        obj = m_w == 2
        assert obj.any() and np.array_equal(obj, m_r == 3)
        # everything inside the frame -- objects and haze -- is bit-identical in both scenes
        assert np.array_equal(img_w[f:-f, f:-f], img_r[f:-f, f:-f])
        assert not np.array_equal(img_w[:f], img_r[:f])  # only the frame shows the scene
        # the haze is labelled with the scene it covers, the objects with scene's object class
        assert set(np.unique(m_w[f:-f, f:-f])) <= {0, 2, IGNORE_INDEX}
        assert set(np.unique(m_r[f:-f, f:-f])) <= {1, 3, IGNORE_INDEX}
        assert not obj[:f + 2].any() and not obj[-f - 2:].any()  # objects stay inside the haze
        assert np.array_equal(np.where(m_w == IGNORE_INDEX), np.where(m_r == IGNORE_INDEX))
        drawn = ds.generate(i)
        assert any(np.array_equal(drawn[1], m) for m in (m_w, m_r))


def test_context_scene_alone_decides_the_class_of_every_interior_pixel():
    ds = ContextScenes("val", 80)
    f, size = ds.frame_width, ds.image_size
    frame = np.ones((size, size), bool)
    frame[f:-f, f:-f] = False
    obj_colour, haze_colour, frame_colour, scene, widths = [], [], [], [], []
    for i in range(80):
        img, m = ds.generate(i)
        obj = (m >= 2) & (m != IGNORE_INDEX)
        s = int(m[frame][0])
        assert (m[frame] == s).all() and (m[obj] == 2 + s).all()
        scene.append(s)
        obj_colour.append(img[obj].mean(0))
        haze_colour.append(img[~frame & (m == s)].mean(0))
        frame_colour.append(img[frame].mean(0))
        if ndimage.label(obj, EIGHT)[1] == 1:  # longest extent over 36 directions
            yy, xx = np.nonzero(obj)
            ang = np.linspace(0, np.pi, 36, endpoint=False)
            widths.append(np.ptp(np.outer(yy, np.sin(ang)) + np.outer(xx, np.cos(ang)), 0).max())
    scene = np.array(scene)
    obj_colour, haze_colour, frame_colour = map(np.array, (obj_colour, haze_colour, frame_colour))
    assert 0.3 < scene.mean() < 0.7
    # global oracle: the frame's mean colour (water is blue) gives every class
    assert ((frame_colour[:, 2] - frame_colour[:, 0] > 30) == (scene == 0)).all()

    # local oracles: a nearest-centroid rule on an object's or the haze's own colour is at chance
    def nearest_centroid(x):
        mu = np.stack([x[:40][scene[:40] == c].mean(0) for c in (0, 1)])
        pred = np.linalg.norm(x[40:, None] - mu, axis=2).argmin(1)
        return (pred == scene[40:]).mean()

    assert nearest_centroid(frame_colour) == 1.0
    assert nearest_centroid(obj_colour) < 0.7 and nearest_centroid(haze_colour) < 0.7
    # objects are large: a third to most of the image long
    widths = np.array(widths) / size
    assert widths.min() > 0.33 and widths.max() < 0.85 and 0.4 < np.median(widths) < 0.7
    # the centre is size/2 - f px from the nearest scene pixel (56 px at 128 px): a local
    # receptive field cannot see the scene from most of the interior
    dist = ndimage.distance_transform_cdt(~frame, metric="chessboard")
    assert dist.max() >= size // 2 - f >= 56
    assert (dist > 24).mean() > 0.2


def test_context_tokens_scene_is_the_majority_of_the_whole_images_marks():
    from datamodules.synthetic import ContextTokens

    ds = ContextTokens("val", 40)
    agree, margins = [], []
    for i in range(40):
        (img_w, m_w), (img_r, m_r) = ds.render(i, scene=0), ds.render(i, scene=1)
        # objects, haze and mark positions are identical; only the marks' types differ
        obj = m_w == 2
        assert obj.any() and np.array_equal(obj, m_r == 3)
        changed = (img_w != img_r).any(-1)
        assert changed.any() and not changed[obj].any()
        assert (m_w[~obj & (m_w != IGNORE_INDEX)] == 0).all() and (m_r[~obj & (m_r != IGNORE_INDEX)] == 1).all()
        # the label is the majority of the marks: count the waves (the only blue outside objects)
        img, m = ds.generate(i)
        scene = int(m[m < 2][0])
        assert (m[m < 2] == scene).all()
        waves = ndimage.label((img[..., 2].astype(int) - img[..., 0] > 60) & (m < 2), EIGHT)[1]
        n = ds.num_tokens
        assert 5 <= waves <= 10 and scene == (0 if 2 * waves > n else 1)
        margins.append(abs(2 * waves - n))
        agree.append((waves if scene == 0 else n - waves) / n)
    # close calls: one mark alone is weak evidence, only the whole count decides
    assert np.mean(agree) < 0.7 and np.median(margins) <= 3


# --------------------------------------------------------------------------- export / CLI
def test_export_voc_round_trip(tmp_path):
    from datamodules.voc import VOC_PALETTE, VOCSegmentation

    export_synthetic("thin", tmp_path, "voc", num_train=3, num_val=2, image_size=96, seed=5)
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    lists = voc / "ImageSets" / "Segmentation"
    train_ids = [f"synth_thin_train_{i:06d}" for i in range(3)]
    val_ids = [f"synth_thin_val_{i:06d}" for i in range(2)]
    assert (lists / "train.txt").read_text().split() == train_ids
    assert (lists / "val.txt").read_text().split() == val_ids
    assert (lists / "trainval.txt").read_text().split() == train_ids + val_ids
    png = Image.open(voc / "SegmentationClass" / f"{train_ids[0]}.png")
    assert png.mode == "P" and png.getpalette()[:6] == [*VOC_PALETTE[0], *VOC_PALETTE[1]]
    for split, n in (("train", 3), ("val", 2)):
        ds, reader = ThinStructures(split, n, 96, seed=5), VOCSegmentation(tmp_path, split)
        assert len(reader) == n
        for i in range(n):
            img, mask = reader[i]
            ref_img, ref_mask = ds[i]
            assert torch.equal(mask, ref_mask)  # 255 kept
            assert (img.float() - ref_img.float()).abs().mean() < 4  # JPEG quality 95, 4:4:4
    assert len(VOCSegmentation(tmp_path, "trainval")) == 5


def test_export_ade20k_round_trip_shifts_labels_once(tmp_path):
    from datamodules.ade20k import ADE20KSegmentation

    export_synthetic("context", tmp_path, "ade20k", num_train=3, num_val=2, image_size=96)
    ann = tmp_path / "ADEChallengeData2016" / "annotations"
    for split, folder, n in (("train", "training", 3), ("val", "validation", 2)):
        ds, reader = ContextScenes(split, n, 96), ADE20KSegmentation(tmp_path, folder)
        assert len(reader) == n
        for i in range(n):
            ref = ds.generate(i)[1]
            raw = np.array(Image.open(ann / folder / f"synth_context_{split}_{i:06d}.png"))
            assert Image.open(ann / folder / f"synth_context_{split}_{i:06d}.png").mode == "L"
            assert np.array_equal(raw, np.where(ref == IGNORE_INDEX, 0, ref + 1))
            assert torch.equal(reader[i][1], torch.from_numpy(ref.astype(np.int64)))


def test_export_refuses_non_empty_dir_unless_forced(tmp_path, monkeypatch):
    export_synthetic("multiscale", tmp_path, "ade20k", num_train=4, num_val=1, image_size=96)
    with pytest.raises(FileExistsError, match=str(tmp_path)):
        export_synthetic("multiscale", tmp_path, "ade20k", num_train=2, num_val=1, image_size=96)
    export_synthetic("multiscale", tmp_path, "ade20k", num_train=2, num_val=1, image_size=96,
                     force=True)
    images = tmp_path / "ADEChallengeData2016" / "images" / "training"
    assert sorted(p.name for p in images.iterdir()) == [
        "synth_multiscale_train_000000.jpg", "synth_multiscale_train_000001.jpg"]

    class TooMany(ThinStructures):
        class_names = tuple(f"c{i}" for i in range(151))

    monkeypatch.setitem(SYNTHETIC_TASKS, "toomany", TooMany)
    with pytest.raises(ValueError, match="150"):
        export_synthetic("toomany", tmp_path / "x", "ade20k", num_train=1, num_val=1)
    with pytest.raises(ValueError, match="layout"):
        export_synthetic("thin", tmp_path / "y", "coco")


def test_cli_errors_name_the_choices_and_the_directory(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", "--task", "thinn", "--layout", "voc", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "context" in capsys.readouterr().err
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(SystemExit) as exc:
        main(["export", "--task", "thin", "--layout", "voc", "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "--force" in err


@pytest.mark.slow
def test_cli_export_in_a_subprocess_matches_this_process(tmp_path):
    """Also checks determinism across processes: masks written by another interpreter."""
    out = tmp_path / "voc"
    cmd = [sys.executable, "-m", "datamodules.synthetic", "export", "--task", "multiscale",
           "--layout", "voc", "--out", str(out), "--num-train", "2", "--num-val", "1",
           "--image-size", "96", "--seed", "3"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "RuntimeWarning" not in res.stderr  # runpy: the package imports no module twice
    seg = out / "VOCdevkit" / "VOC2012" / "SegmentationClass"
    ds = MultiScaleShapes("train", 2, 96, seed=3)
    for i in range(2):
        assert np.array_equal(np.array(Image.open(seg / f"synth_multiscale_train_{i:06d}.png")),
                              ds.generate(i)[1])
    assert (seg / "synth_multiscale_val_000000.png").is_file()


# --------------------------------------------------------------------------- datamodules
def test_datamodule_defaults_keep_designed_scales():
    dm = SyntheticDataModule("multiscale", num_train=8, num_val=2)
    assert dm.image_size == 160 and dm.crop_size == 160 and dm.augment == "flip"
    assert dm.hparams["num_train"] == 8 and dm.num_classes == 4
    assert dm.class_names == MultiScaleShapes.class_names
    assert dm.hparams["task"] == "multiscale"
    dm = SyntheticDataModule(task="thin", num_train=8, num_val=2, image_size=96, batch_size=4)
    assert dm.crop_size == 96
    dm.setup("fit")
    img, mask = next(iter(dm.train_dataloader()))
    assert img.shape == (4, 3, 96, 96) and img.dtype == torch.float32
    assert mask.shape == (4, 96, 96) and mask.dtype == torch.int64
    # a flip is the only augmentation: every training mask is an item's mask or its mirror
    items = [ThinStructures("train", 8, 96)[i][1] for i in range(8)]
    for m in mask:
        assert any(torch.equal(m, x) or torch.equal(m, x.flip(-1)) for x in items)


class _OneByOneConv(L.LightningModule):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, num_classes, 1)
        self.losses: list[float] = []

    def _loss(self, batch):
        x, y = batch
        loss = F.cross_entropy(self.conv(x), y, ignore_index=IGNORE_INDEX)
        self.losses.append(loss.item())
        return loss

    def training_step(self, batch, batch_idx):
        return self._loss(batch)

    def validation_step(self, batch, batch_idx):
        self._loss(batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize("task", ["thin", "multiscale", "context"])
def test_fast_dev_run(task):
    dm = SyntheticDataModule(task, num_train=4, num_val=2, image_size=96, batch_size=2,
                             val_batch_size=2)
    model = _OneByOneConv(dm.num_classes)
    trainer = L.Trainer(fast_dev_run=True, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    assert len(model.losses) == 2 and all(np.isfinite(model.losses))


def test_run_seed_changes_order_not_data_and_data_seed_changes_data():
    def first_batch(**kw):
        dm = SyntheticDataModule("thin", num_train=16, num_val=2, image_size=64, batch_size=4,
                                 **kw)
        dm.setup("fit")
        return dm, next(iter(dm.train_dataloader()))[1]

    dm0, b0 = first_batch(seed=0)
    dm1, b1 = first_batch(seed=1)
    assert torch.equal(dm0.train_set[3][1], dm1.train_set[3][1])  # same images for every run seed
    assert not torch.equal(b0, b1)  # but another shuffle
    dm2, _ = first_batch(seed=0, data_seed=1)
    assert not torch.equal(dm0.train_set[3][1], dm2.train_set[3][1])


# --------------------------------------------------------------------------- touching
def _touching_items(n: int = 12, split: str = "val"):
    from datamodules.synthetic import TouchingCells

    ds = TouchingCells(split, n)
    return [ds._draw(ds.seed_sequence(i), with_instances=True) for i in range(n)]


def _separating_borders(mask: np.ndarray, inst: np.ndarray) -> np.ndarray:
    """Labelled background pixels next to a cell: the void band covers the outer contours."""
    return (mask == 0) & ndimage.binary_dilation(inst > 0, structure=EIGHT)


def test_touching_cells_touch_and_every_class_component_is_one_cell():
    from datamodules.synthetic import TouchingCells

    items = _touching_items()
    assert np.array_equal(TouchingCells("val", 12).instances(3), items[3][2])
    touching, cells = 0, 0
    for _, mask, inst in items:
        for c in (1, 2):  # 4-connected components of a class region: never two cells in one
            comp, n = ndimage.label(mask == c)
            for j in range(1, n + 1):
                assert len(np.unique(inst[comp == j])) == 1
        assert (mask[inst > 0] > 0).all() and (mask[inst > 0] != IGNORE_INDEX).all()
        borders = _separating_borders(mask, inst)
        # a separating border pixel sees two different cells within 2 px (the 2 px borders)
        hi = ndimage.maximum_filter(inst, size=5)
        lo = ndimage.minimum_filter(np.where(inst > 0, inst, 10**6), size=5)
        assert (hi[borders] != lo[borders]).all()
        ids = np.unique(inst[inst > 0])
        around = ndimage.binary_dilation(borders, structure=EIGHT)
        near_border = np.unique(inst[around & (inst > 0)])
        cells, touching = cells + len(ids), touching + len(near_border)
    assert cells / len(items) > 10 and touching / cells > 0.6


def test_touching_borders_barely_move_miou_but_carry_the_border_weight():
    from models.unet_weights import unet_weight_map

    cm = np.zeros((3, 3))
    for k, (_, mask, inst) in enumerate(_touching_items()):
        borders = _separating_borders(mask, inst)
        merged = mask.copy()  # every separating border labelled as a neighbouring cell's class
        neighbour = ndimage.grey_dilation(np.where(inst > 0, mask, 0), size=3)
        merged[borders] = neighbour[borders]
        valid = mask != IGNORE_INDEX
        cm += np.bincount(mask[valid].astype(int) * 3 + merged[valid], minlength=9).reshape(3, 3)
        if k < 3:  # Eq. 2 on the class map finds the cells: same map as with instance ids
            w = unet_weight_map(torch.from_numpy(mask.astype(np.int64)))
            torch.testing.assert_close(
                w, unet_weight_map(torch.from_numpy(mask.astype(np.int64)),
                                   instances=torch.from_numpy(inst.astype(np.int64))))
            background = (mask == 0) & ~borders
            assert w[torch.from_numpy(borders)].mean() > 5 * w[torch.from_numpy(background)].mean()
    iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
    assert iou.mean() > 0.9  # yet every touching pair of cells is merged


def test_touching_datamodule():
    dm = SyntheticDataModule(task="touching", num_train=4, num_val=2, batch_size=2)
    assert dm.num_classes == 3
    dm.setup("fit")
    img, mask = next(iter(dm.train_dataloader()))
    assert img.shape == (2, 3, 128, 128) and mask.shape == (2, 128, 128)
