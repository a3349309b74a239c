"""Instance data: VOC SegmentationObject reader (formats and every bad input), the synthetic
task, its export to the VOC layout read back exactly, and the datamodule's batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.instance import (
    InstanceDataModule,
    InstanceTransform,
    SyntheticInstances,
    VOCInstanceSegmentation,
    build_instance_datamodule,
    export_synthetic_instances,
    main,
)
from datamodules.io import CorruptSampleError
from tests.data_fixtures import image_array, write_jpeg, write_palette_png

H, W = 24, 32


def _layout(root, split_ids: dict[str, list[str]]):
    voc = root / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    for split, ids in split_ids.items():
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return voc


def write_item(voc, name: str, objects: np.ndarray, classes: np.ndarray, image_hw=None) -> None:
    write_jpeg(voc / "JPEGImages" / f"{name}.jpg", image_array(*(image_hw or objects.shape), seed=len(name)))
    write_palette_png(voc / "SegmentationObject" / f"{name}.png", objects)
    write_palette_png(voc / "SegmentationClass" / f"{name}.png", classes)


def two_instances() -> tuple[np.ndarray, np.ndarray]:
    """Instance id 1 (class 15, person) at rows 2-9, cols 3-11 inside a 255 ring; instance id 3
    (class 7, car; ids need not be consecutive) at rows 12-18, cols 20-29, its row 19 void.
    255 boundary pixels belong to no instance."""
    obj = np.zeros((H, W), np.uint8)
    cls = np.zeros((H, W), np.uint8)
    obj[1:11, 2:13] = cls[1:11, 2:13] = 255
    obj[2:10, 3:12], cls[2:10, 3:12] = 1, 15
    obj[12:20, 20:30], cls[12:20, 20:30] = 3, 7
    obj[19, 20:30] = cls[19, 20:30] = 255  # a boundary row inside the second box
    return obj, cls


@pytest.fixture
def voc(tmp_path):
    voc = _layout(tmp_path, {"train": ["a", "b"], "val": ["c"]})
    obj, cls = two_instances()
    for name in ("a", "b", "c"):
        write_item(voc, name, obj, cls)
    return tmp_path


def test_voc_item_format(voc):
    ds = VOCInstanceSegmentation(voc, "train")
    assert len(ds) == 2 and ds.ids == ["a", "b"]
    image, target = ds[1]
    assert image.dtype == torch.uint8 and image.shape == (3, H, W)
    assert target["image_id"] == 1
    assert target["labels"].tolist() == [15, 7] and target["labels"].dtype == torch.int64
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (2, H, W)
    assert target["boxes"].dtype == torch.float32
    # x2/y2 exclusive (COCO pixel extents); the 255 row 19 is not part of instance 2
    assert target["boxes"].tolist() == [[3, 2, 12, 10], [20, 12, 30, 19]]
    assert int(target["masks"][0].sum()) == 8 * 9 and int(target["masks"][1].sum()) == 7 * 10
    obj, _ = two_instances()
    assert not target["masks"][:, torch.from_numpy(obj == 255)].any()


def test_voc_transforms_receive_image_and_target(voc):
    ds = VOCInstanceSegmentation(voc, "val", transforms=InstanceTransform(flip=False))
    image, target = ds[0]
    assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert len(target["labels"]) == 2


def test_voc_layout_errors(tmp_path, voc):
    with pytest.raises(FileNotFoundError, match="(?s)does not exist.*SegmentationObject"):
        VOCInstanceSegmentation(tmp_path / "nope", "train")
    with pytest.raises(FileNotFoundError, match="SegmentationObject"):
        VOCInstanceSegmentation(voc / "VOCdevkit", "train")  # one level too deep
    (voc / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").write_text("\n")
    with pytest.raises(ValueError, match="val.txt is empty"):
        VOCInstanceSegmentation(voc, "val")
    (voc / "VOCdevkit/VOC2012/SegmentationObject/b.png").unlink()
    with pytest.raises(FileNotFoundError, match="SegmentationObject/b.png"):
        VOCInstanceSegmentation(voc, "train")


def test_voc_bad_items_name_the_file(voc):
    v = voc / "VOCdevkit" / "VOC2012"
    obj, cls = two_instances()
    ds = VOCInstanceSegmentation(voc, "train")
    (v / "JPEGImages" / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(CorruptSampleError, match="a.jpg"):
        ds[0]
    write_item(v, "a", obj, cls, image_hw=(H + 1, W))
    with pytest.raises(CorruptSampleError, match="a.jpg.*SegmentationObject/a.png"):
        ds[0]
    bad = cls.copy()
    bad[0, 0] = 42
    write_item(v, "a", obj, bad)
    with pytest.raises(CorruptSampleError, match=r"SegmentationClass/a.png: label values \[42\]"):
        ds[0]
    mixed = cls.copy()
    mixed[2:4, 3:12] = 9  # instance 1 now covers classes 9 and 15
    write_item(v, "a", obj, mixed)
    with pytest.raises(CorruptSampleError, match=r"SegmentationObject/a.png: instance 1 covers class values \[9, 15\]"):
        ds[0]
    background = cls.copy()
    background[12:19, 20:30] = 0  # instance 3 on background pixels
    write_item(v, "a", obj, background)
    with pytest.raises(CorruptSampleError, match=r"instance 3 covers class values \[0\]"):
        ds[0]
    Image.fromarray(np.stack([obj] * 3, -1)).save(v / "SegmentationObject" / "b.png")  # RGB
    with pytest.raises(CorruptSampleError, match="b.png: label mask has mode 'RGB'"):
        ds[1]


def test_synthetic_deterministic_and_designed():
    ds = SyntheticInstances("train", 12, image_size=96, data_seed=3)
    a, b = ds[5], SyntheticInstances("train", 12, image_size=96, data_seed=3)[5]
    assert torch.equal(a[0], b[0]) and all(torch.equal(a[1][k], b[1][k]) for k in ("boxes", "labels", "masks"))
    assert not torch.equal(a[0], SyntheticInstances("val", 12, image_size=96, data_seed=3)[5][0])
    counts, overlaps = [], 0
    for i in range(len(ds)):
        image, t = ds[i]
        n = len(t["labels"])
        counts.append(n)
        assert image.shape == (3, 96, 96) and t["masks"].shape == (n, 96, 96)
        assert set(t["labels"].tolist()) <= {1, 2, 3}
        assert t["masks"].sum(0).max() <= 1  # each pixel belongs to at most one instance
        assert (t["masks"].flatten(1).sum(1) >= 16).all()
        wh = t["boxes"][:, 2:] - t["boxes"][:, :2]
        assert (wh >= 1).all() and (wh <= 41).all()
        # touching/overlapping: some instance's box meets another's
        b = t["boxes"]
        lt, rb = torch.max(b[:, None, :2], b[None, :, :2]), torch.min(b[:, None, 2:], b[None, :, 2:])
        meet = ((rb - lt) >= 0).all(-1) & ~torch.eye(n, dtype=torch.bool)
        overlaps += bool(meet.any())
    assert min(counts) >= 1 and max(counts) <= 8
    assert overlaps >= len(ds) // 3


def test_export_round_trip(tmp_path):
    root = export_synthetic_instances(tmp_path / "synth", num_train=3, num_val=2, image_size=64, data_seed=1)
    for split, n in (("train", 3), ("val", 2)):
        voc, synth = VOCInstanceSegmentation(root, split), SyntheticInstances(split, n, 64, data_seed=1)
        assert len(voc) == n
        for i in range(n):
            (vi, vt), (si, st) = voc[i], synth[i]
            for key in ("boxes", "labels", "masks"):
                assert torch.equal(vt[key], st[key]), key
            diff = (vi.float() - si.float()).abs()  # JPEG at quality 100, 4:4:4
            assert diff.mean() < 1 and diff.max() <= 8
    with Image.open(root / "VOCdevkit/VOC2012/SegmentationObject/synth_val_000001.png") as im:
        assert im.mode == "P"


def test_export_cli(tmp_path, capsys):
    main(["export", "--out", str(tmp_path / "o"), "--num-train", "2", "--num-val", "1", "--image-size", "64"])
    assert "wrote 2 train + 1 val" in capsys.readouterr().out
    assert len(VOCInstanceSegmentation(tmp_path / "o", "val")) == 1


def test_flip_moves_boxes_with_masks():
    image, target = SyntheticInstances("train", 1, 64)[0]
    torch.manual_seed(0)
    flips = [InstanceTransform(flip=True)(image, target) for _ in range(8)]
    flipped = [f for f in flips if not torch.equal(f[0], image.float() / 255)]
    assert 0 < len(flipped) < 8
    img, t = flipped[0]
    assert torch.equal(img, image.flip(-1).float() / 255)
    assert torch.equal(t["masks"], target["masks"].flip(-1))
    back = InstanceTransform(flip=False)  # boxes recomputed from the flipped masks agree
    from datamodules.instance import instances_to_target

    ids = (t["masks"] * torch.arange(1, len(t["labels"]) + 1).view(-1, 1, 1)).sum(0).numpy()
    assert torch.equal(instances_to_target(ids, t["labels"].tolist(), 0)["boxes"], t["boxes"])
    assert back(image, target)[1] is target


def test_datamodule_batches_and_seeding():
    dm = build_instance_datamodule("synthetic", None, seed=1, batch_size=3, val_batch_size=2,
                                   num_train=7, num_val=3, image_size=64)
    assert dm.num_classes == 4 and dm.class_names[0] == "background"
    dm.setup("fit")
    assert dm.train_size == 7
    images, targets = next(iter(dm.train_dataloader()))
    assert isinstance(images, list) and len(images) == 3 and images[0].dtype == torch.float32
    assert isinstance(targets, list) and set(targets[0]) == {"boxes", "labels", "masks", "image_id"}
    order = [[t["image_id"] for t in b[1]] for b in dm.train_dataloader()]
    again = build_instance_datamodule("synthetic", None, seed=1, batch_size=3, num_train=7, num_val=3, image_size=64)
    again.setup("fit")
    assert order == [[t["image_id"] for t in b[1]] for b in again.train_dataloader()]
    assert len(order) == 2  # drop_last
    val = list(dm.val_dataloader())
    assert [len(b[0]) for b in val] == [2, 1] and [t["image_id"] for b in val for t in b[1]] == [0, 1, 2]


def test_datamodule_voc_and_argument_errors(voc):
    dm = InstanceDataModule("voc", voc, num_val=1, batch_size=1)
    assert dm.num_classes == 21 and dm.class_names[15] == "person"
    dm.setup("fit")
    assert dm.train_size == 2 and len(dm.val_set) == 1
    with pytest.raises(ValueError, match="needs root"):
        InstanceDataModule("voc")
    with pytest.raises(ValueError, match="image_size applies to synthetic"):
        InstanceDataModule("voc", voc, image_size=64)
    with pytest.raises(ValueError, match="kind must be"):
        InstanceDataModule("coco")
    with pytest.raises(ValueError, match="augment must be 'flip' or 'none'"):
        InstanceDataModule(augment="deeplab")
