"""VOC 2012 + SBD: train_aug arithmetic, mask precedence, and every bad input named."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.io import CorruptSampleError
from datamodules.voc import (
    VOC_CLASSES,
    VOC_PALETTE,
    VOCDataModule,
    VOCSegmentation,
    read_sbd_mat,
)
from tests.data_fixtures import (
    fast_dev_run,
    label_array,
    make_aug,
    make_sbd,
    make_voc,
    size_of,
    write_palette_png,
    write_sbd_mat,
)

# VOC train/val, SBD train/val overlapping on purpose:
#   t1 is in VOC train and SBD train, t2 in VOC train and SBD val (VOC mask must win),
#   v1/v2 are VOC val ids that SBD also lists (must be excluded), s1..s3 are SBD-only.
VOC_TRAIN, VOC_VAL = ["t1", "t2", "t3"], ["v1", "v2"]
SBD_TRAIN, SBD_VAL = ["t1", "s1", "s2", "v1"], ["s3", "t2", "v2"]
TRAIN_AUG = {"t1", "t2", "t3", "s1", "s2", "s3"}
VOC_CLS, SBD_CLS, AUG_CLS = 1, 2, 3  # one foreground class per source, to tell them apart


@pytest.fixture(scope="module")
def voc_sbd(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocsbd")
    ids = VOC_TRAIN + VOC_VAL + SBD_TRAIN + SBD_VAL
    make_voc(root, VOC_TRAIN, VOC_VAL, extra_images=["s1"], mask_class=dict.fromkeys(ids, VOC_CLS))
    make_sbd(root, SBD_TRAIN, SBD_VAL, mask_class=dict.fromkeys(ids, SBD_CLS))
    return root


@pytest.fixture
def small_voc(tmp_path):
    return make_voc(tmp_path, ["a1", "a2", "a3"], ["b1"])


def _classes(mask: torch.Tensor) -> set[int]:
    return set(mask.unique().tolist())


def test_split_sizes_and_items(voc_sbd):
    train = VOCSegmentation(voc_sbd, "train")
    assert train.ids == VOC_TRAIN and len(VOCSegmentation(voc_sbd, "val")) == 2
    assert len(VOCSegmentation(voc_sbd, "trainval")) == 5
    image, mask = train[0]
    assert image.dtype == torch.uint8 and image.shape == (3, *size_of("t1"))
    assert mask.dtype == torch.int64 and mask.shape == size_of("t1")
    assert _classes(mask) == {0, VOC_CLS, 255}  # VOC masks carry the 255 boundary


def test_train_aug_is_the_union_minus_voc_val(voc_sbd):
    ds = VOCSegmentation(voc_sbd, "train_aug")
    assert set(ds.ids) == TRAIN_AUG and len(ds.ids) == len(TRAIN_AUG)


def test_train_aug_mask_and_image_precedence(voc_sbd):
    ds = VOCSegmentation(voc_sbd, "train_aug")
    src = {i: (img, m) for i, img, m in zip(ds.ids, ds.images, ds.masks, strict=True)}
    voc = voc_sbd / "VOCdevkit" / "VOC2012"
    sbd = voc_sbd / "benchmark_RELEASE" / "dataset"
    # VOC SegmentationClass wins over SBD for ids in both; SBD for the rest
    assert src["t1"][1] == str(voc / "SegmentationClass" / "t1.png")
    assert src["t2"][1] == str(voc / "SegmentationClass" / "t2.png")
    assert src["s1"][1] == str(sbd / "cls" / "s1.mat")
    # images from VOC JPEGImages when there, else SBD img/
    assert src["s1"][0] == str(voc / "JPEGImages" / "s1.jpg")
    assert src["s2"][0] == str(sbd / "img" / "s2.jpg")
    for i in ds.ids:
        _, mask = ds[ds.ids.index(i)]
        expected = {0, VOC_CLS, 255} if i in VOC_TRAIN else {0, SBD_CLS}
        assert _classes(mask) == expected, i


def test_segmentation_class_aug_alone_and_with_sbd(tmp_path):
    # Aug-only: (VOC train ∪ Aug stems) − VOC val; Aug holds val ids too, as the real one does
    root = make_voc(
        tmp_path,
        ["t1", "t2"],
        ["v1"],
        extra_images=["a1", "a2"],
        mask_class={"t1": VOC_CLS, "t2": VOC_CLS},
    )
    make_aug(
        root,
        ["t1", "a1", "a2", "v1"],
        mask_class=dict.fromkeys(["t1", "a1", "a2", "v1"], AUG_CLS),
        mode="L",
        inside_voc=True,
    )
    ds = VOCSegmentation(root, "train_aug")
    assert set(ds.ids) == {"t1", "t2", "a1", "a2"}
    masks = {i: _classes(ds[k][1]) for k, i in enumerate(ds.ids)}
    assert masks["t1"] == {0, VOC_CLS, 255} and masks["a1"] == {0, AUG_CLS}
    # with SBD present as well, the .mat (original release) beats the Aug PNG
    make_sbd(root, ["a1"], ["t2"], mask_class={"a1": SBD_CLS, "t2": SBD_CLS})
    ds = VOCSegmentation(root, "train_aug")
    assert _classes(ds[ds.ids.index("a1")][1]) == {0, SBD_CLS}
    assert _classes(ds[ds.ids.index("a2")][1]) == {0, AUG_CLS}
    assert _classes(ds[ds.ids.index("t2")][1]) == {0, VOC_CLS, 255}


def test_sbd_fixture_reads_like_the_real_release(voc_sbd):
    import scipy.io

    path = voc_sbd / "benchmark_RELEASE" / "dataset" / "cls" / "s1.mat"
    assert path.read_bytes().startswith(b"MATLAB 5.0 MAT-file")
    gt = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)["GTcls"]
    assert gt._fieldnames == ["Boundaries", "Segmentation", "CategoriesPresent"]
    assert gt.Segmentation.dtype == np.uint8 and gt.Segmentation.shape == size_of("s1")
    assert len(gt.Boundaries) == 20
    assert torch.equal(read_sbd_mat(path), torch.from_numpy(gt.Segmentation.astype(np.int64)))


def test_bad_sbd_mat_is_named(tmp_path):
    path = tmp_path / "x.mat"
    import scipy.io

    scipy.io.savemat(path, {"GTinst": {"Segmentation": np.zeros((3, 3), np.uint8)}})
    with pytest.raises(CorruptSampleError, match=r"x.mat.*GTcls.*GTinst"):
        read_sbd_mat(path)
    write_sbd_mat(tmp_path / "y.mat", np.zeros((4, 4)))
    cut = tmp_path / "cut.mat"
    cut.write_bytes((tmp_path / "y.mat").read_bytes()[:150])
    with pytest.raises(CorruptSampleError, match="cut.mat"):
        read_sbd_mat(cut)


def test_classes_and_palette():
    assert (
        len(VOC_CLASSES) == 21 and VOC_CLASSES[0] == "background" and VOC_CLASSES[-1] == "tvmonitor"
    )
    assert len(VOC_PALETTE) == 256
    assert VOC_PALETTE[:4] == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]
    assert VOC_PALETTE[15] == (192, 128, 128) and VOC_PALETTE[255] == (224, 224, 192)
    assert len(set(VOC_PALETTE)) == 256
    assert VOCDataModule.num_classes == 21 and len(VOCDataModule.palette) == 21


# ---- bad inputs: every message names the file or argument --------------------------------


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        VOCSegmentation(tmp_path / "nowhere", "train")
    msg = str(e.value)
    assert "nowhere" in msg and "does not exist" in msg
    assert "VOCdevkit/VOC2012/JPEGImages" in msg and "VOCtrainval_11-May-2012.tar" in msg
    assert "SBD" in msg and "benchmark.tgz" in msg


def test_wrong_root(tmp_path, small_voc):
    junk = tmp_path / "junk"
    (junk / "stuff").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"wrong layout.*JPEGImages.*found \['stuff'\]"):
        VOCSegmentation(junk, "train")
    with pytest.raises(FileNotFoundError, match="CONTAINS VOCdevkit"):
        VOCSegmentation(small_voc / "VOCdevkit", "train")


def test_train_aug_without_sbd_is_a_loud_error(small_voc):
    with pytest.raises(FileNotFoundError) as e:
        VOCSegmentation(small_voc, "train_aug")
    msg = str(e.value)
    assert "train_aug" in msg and "benchmark_RELEASE" in msg and "SegmentationClassAug" in msg
    assert "home.bharathh.info" in msg and "host.robots.ox.ac.uk" in msg and "10,582" in msg


def test_unknown_split_and_empty_list(small_voc):
    with pytest.raises(ValueError, match="split must be one of.*'training'"):
        VOCSegmentation(small_voc, "training")
    (small_voc / "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt").write_text("\n")
    with pytest.raises(ValueError, match=r"ImageSets/Segmentation/train.txt is empty"):
        VOCSegmentation(small_voc, "train")


def test_missing_listed_files(small_voc):
    voc = small_voc / "VOCdevkit" / "VOC2012"
    (voc / "JPEGImages" / "a2.jpg").unlink()
    (voc / "SegmentationClass" / "a3.png").unlink()
    with pytest.raises(FileNotFoundError) as e:
        VOCSegmentation(small_voc, "train")
    msg = str(e.value)
    assert "2 file(s)" in msg
    assert "'a2'" in msg and str(voc / "JPEGImages" / "a2.jpg") in msg
    assert "'a3'" in msg and str(voc / "SegmentationClass" / "a3.png") in msg
    VOCSegmentation(small_voc, "val")  # the other split is unaffected


def _corrupt(root, kind: str) -> str:
    """Damage item a2 of the small VOC in one way; return the damaged file's name."""
    voc = root / "VOCdevkit" / "VOC2012"
    h, w = size_of("a2")
    if kind == "truncated_jpeg":
        p = voc / "JPEGImages" / "a2.jpg"
        p.write_bytes(p.read_bytes()[:200])
    elif kind == "truncated_png":
        p = voc / "SegmentationClass" / "a2.png"
        p.write_bytes(p.read_bytes()[:60])
    elif kind == "rgb_mask":
        p = voc / "SegmentationClass" / "a2.png"
        Image.open(p).convert("RGB").save(p)
    elif kind == "out_of_range":
        p = voc / "SegmentationClass" / "a2.png"
        m = label_array(h, w, [5], seed=0)
        m[0, 0], m[0, 1] = 42, 21
        write_palette_png(p, m)
    elif kind == "size_mismatch":
        p = voc / "SegmentationClass" / "a2.png"
        write_palette_png(p, label_array(h + 3, w, [5], seed=0))
    return p.name


BAD_ITEMS = [
    ("truncated_jpeg", r"a2.jpg: cannot decode image \(corrupt or truncated"),
    ("truncated_png", r"a2.png: cannot decode label mask \(corrupt or truncated"),
    ("rgb_mask", r"a2.png: label mask has mode 'RGB'; expected palette indices"),
    ("out_of_range", r"a2.png: label values \[21, 42\] are outside the expected VOC labels"),
    ("size_mismatch", r"a2.jpg is \d+×\d+ \(W×H\) but its mask .*a2.png is \d+×\d+"),
]


@pytest.mark.parametrize("kind,pattern", BAD_ITEMS, ids=[k for k, _ in BAD_ITEMS])
def test_bad_items_raise_named_errors_or_are_skipped(small_voc, kind, pattern, caplog):
    _corrupt(small_voc, kind)
    ds = VOCSegmentation(small_voc, "train")
    ds[0], ds[2]  # the good ones still load
    with pytest.raises(CorruptSampleError, match=pattern):
        ds[1]
    skipping = VOCSegmentation(small_voc, "train", skip_corrupt=True)
    with caplog.at_level(logging.WARNING, logger="datamodules"):
        items = [skipping[i] for i in range(3)] + [skipping[1]]
    assert skipping.skipped == 1  # counted once, not re-read
    assert torch.equal(items[1][0], items[2][0])  # the next valid item stands in
    assert sum("skip_corrupt" in r.message and "a2" in r.message for r in caplog.records) == 1


def test_check_labels_off_lets_values_through(small_voc):
    _corrupt(small_voc, "out_of_range")
    _, mask = VOCSegmentation(small_voc, "train", check_labels=False)[1]
    assert 42 in mask


def test_all_corrupt_with_skip_raises(small_voc):
    for i in ("a1", "a2", "a3"):
        (small_voc / "VOCdevkit/VOC2012/JPEGImages" / f"{i}.jpg").write_bytes(b"\xff\xd8\xffjunk")
    with pytest.raises(CorruptSampleError, match="all 3 items are corrupt"):
        VOCSegmentation(small_voc, "train", skip_corrupt=True)[0]


# ---- the DataModule ------------------------------------------------------------------------


def test_voc_datamodule_fast_dev_run(voc_sbd, tmp_path, caplog):
    root = tmp_path / "copy"
    shutil.copytree(voc_sbd, root)
    dm = VOCDataModule(str(root), batch_size=2, crop_size=16, num_workers=0, augment="pspnet")
    with caplog.at_level(logging.INFO, logger="datamodules"):
        seen = fast_dev_run(dm)
    assert dm.train_size == len(TRAIN_AUG)
    assert any("6 training images" in r.message for r in caplog.records)
    train = [s for s in seen if s[0] == "train"]
    val = [s for s in seen if s[0] == "val"]
    assert train and train[0][1:4] == ((2, 3, 16, 16), (2, 16, 16), torch.int64)
    # validation: one full-size image, original-resolution mask
    assert val and val[0][1] == (1, 3, *size_of("v1")) and val[0][2] == (1, *size_of("v1"))
    assert val[0][4] <= {0, VOC_CLS, 255}
    assert dm.hparams.root == str(root) and dm.hparams.train_split == "train_aug"


def test_duplicate_ids_in_a_list_file_are_named(small_voc):
    lst = small_voc / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"
    lst.write_text("b1\na1\nb1\na1\nb1\n")  # a1/b1 would each be scored more than once
    with pytest.raises(ValueError) as e:
        VOCSegmentation(small_voc, "val")
    msg = str(e.value)
    assert str(lst) in msg and "2 image id(s) more than once: a1, b1" in msg
    VOCSegmentation(small_voc, "train")  # the other split is unaffected


def test_train_aug_error_names_the_command_line_fallback_and_downloads(small_voc):
    with pytest.raises(FileNotFoundError) as e:
        VOCSegmentation(small_voc, "train_aug")
    msg = str(e.value)
    assert "split='train'" not in msg  # no command-line flag sets the split itself
    assert "--set data.train_split=train" in msg
    assert "home.bharathh.info" in msg and "SegmentationClassAug.zip" in msg
