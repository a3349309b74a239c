"""FCN's data protocol (Long et al., CVPR 2015): ``sbd_train`` (SBD's own train list, SBD's
images and .mat masks) and ``seg11valid`` (the 736 ids shipped with the FCN reference code, read
from the VOC 2012 tree), and whole-image batches padded to their largest image."""

from __future__ import annotations

import hashlib

import pytest
import torch

from datamodules.base import pad_collate
from datamodules.constants import IGNORE_INDEX
from datamodules.transforms import train_transforms
from datamodules.voc import EXPECTED_SIZES, SEG11VALID_LIST, VOCSegmentation
from experiments.recipe import Data, RecipeError
from experiments.tasks import VOC
from tests.data_fixtures import make_sbd, make_voc, size_of

SEG11VALID_SHA256 = "4ca991bd72c251fd2485eaa9e29536502ea3800d1b1c17c151fd6a04bcfbc2cc"


def seg11valid_ids() -> list[str]:
    return SEG11VALID_LIST.read_text().split()


def test_shipped_seg11valid_list_is_the_reference_file():
    data = SEG11VALID_LIST.read_bytes()
    assert hashlib.sha256(data).hexdigest() == SEG11VALID_SHA256  # byte for byte the FCN repo's
    ids = seg11valid_ids()
    assert len(ids) == len(set(ids)) == EXPECTED_SIZES["seg11valid"] == 736
    assert all(i[:4] in {"2007", "2008", "2009", "2010", "2011"} and i[4] == "_" for i in ids)
    assert (SEG11VALID_LIST.parent / "README.md").read_text().count("fcn.berkeleyvision.org") >= 1


@pytest.fixture(scope="module")
def fcn_tree(tmp_path_factory):
    """VOC 2012 with every seg11valid image (+ 2 train ids), SBD with 3 train and 1 val ids."""
    root = tmp_path_factory.mktemp("fcn")
    val = seg11valid_ids()
    sbd_train = ["2008_000002", "2008_000003", "2009_000001"]
    # VOC's own mask of an SBD id says class 5; SBD's .mat says 7: tells the sources apart
    make_voc(root, train=["2007_000032", "2008_000002"], val=val, mask_class={"2008_000002": 5})
    make_sbd(root, train=sbd_train, val=["2010_000001"], mask_class={i: 7 for i in sbd_train})
    return root


def test_seg11valid_reads_all_736_listed_images_from_voc2012(fcn_tree):
    ds = VOCSegmentation(fcn_tree, "seg11valid")
    assert len(ds) == 736 and ds.ids == seg11valid_ids()
    assert all("/VOCdevkit/VOC2012/JPEGImages/" in p for p in ds.images)
    assert all("/VOCdevkit/VOC2012/SegmentationClass/" in p for p in ds.masks)
    image, mask = ds.load(0)
    assert tuple(image.shape[-2:]) == tuple(mask.shape) == size_of(ds.ids[0])


def test_sbd_train_is_sbds_list_with_sbd_images_and_mat_masks(fcn_tree):
    ds = VOCSegmentation(fcn_tree, "sbd_train")
    assert ds.ids == ["2008_000002", "2008_000003", "2009_000001"]  # SBD's train.txt, not SBD val
    assert all(p.endswith(".mat") and "benchmark_RELEASE" in p for p in ds.masks)
    assert all("benchmark_RELEASE/dataset/img/" in p for p in ds.images)
    _, mask = ds[0]  # 2008_000002 also has a VOC mask (class 5): SBD's is used
    assert set(mask.unique().tolist()) == {0, 7}


@pytest.mark.parametrize("missing", ["JPEGImages/{}.jpg", "SegmentationClass/{}.png"])
def test_a_missing_seg11valid_file_is_named(fcn_tree, tmp_path, missing):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(fcn_tree / "VOCdevkit", root / "VOCdevkit")
    gone = seg11valid_ids()[123]
    (root / "VOCdevkit" / "VOC2012" / missing.format(gone)).unlink()
    with pytest.raises(FileNotFoundError, match="seg11valid") as err:
        VOCSegmentation(root, "seg11valid")
    assert "1 file(s)" in str(err.value) and gone in str(err.value)


def test_sbd_train_without_sbd_names_what_is_missing(tmp_path):
    make_voc(tmp_path, train=["2007_000032"], val=["2007_000033"])
    with pytest.raises(FileNotFoundError, match="sbd_train.*benchmark_RELEASE"):
        VOCSegmentation(tmp_path, "sbd_train")


def test_splits_are_recipe_values_of_voc():
    VOC.check(Data(train_split="sbd_train", val_split="seg11valid"))
    assert VOC.splits_of(Data(train_split="sbd_train", val_split="seg11valid")) == ("sbd_train", "seg11valid")
    with pytest.raises(RecipeError, match="seg11val"):
        VOC.check(Data(val_split="seg11val"))


def test_whole_images_without_augmentation_are_padded_per_batch():
    tf = train_transforms(None, augment="none")
    torch.manual_seed(0)
    pairs = []
    for h, w in ((20, 31), (27, 18)):
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
        mask = torch.randint(0, 21, (h, w))
        out_image, out_mask = tf(image, mask)
        assert torch.equal(out_mask, mask)  # no crop, no flip, no resize: the whole image as it is
        assert tuple(out_image.shape) == (3, h, w)
        pairs.append((out_image, out_mask))
    images, masks = pad_collate(pairs)
    assert images.shape == (2, 3, 27, 31) and masks.shape == (2, 27, 31)
    assert (masks[0, 20:] == IGNORE_INDEX).all() and (masks[1, :, 18:] == IGNORE_INDEX).all()
    assert (images[0, :, 20:] == 0).all()  # the mean colour once normalised
