"""ADE20K: the zero-label reduction happens exactly once; pairing and values are checked."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from datamodules.ade20k import (
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    ADE20KDataModule,
    ADE20KSegmentation,
    reduce_zero_label,
)
from datamodules.constants import IGNORE_INDEX
from datamodules.io import CorruptSampleError
from datamodules.transforms import train_transforms
from tests.data_fixtures import fast_dev_run, make_ade20k, size_of, write_jpeg, write_l_png

ANN = "ADEChallengeData2016/annotations"
IMG = "ADEChallengeData2016/images"


@pytest.fixture
def ade(tmp_path):
    return make_ade20k(tmp_path, n_train=3, n_val=2)


def _raw(h: int, w: int) -> np.ndarray:
    raw = np.zeros((h, w), np.uint8)  # 0 "other"
    raw[:, : w // 3] = 1  # wall
    raw[:, w // 3 : 2 * w // 3] = 150  # flag
    raw[0, -1] = 77
    return raw


def test_reduce_zero_label():
    raw = torch.tensor([[0, 1, 2], [149, 150, 0]])
    assert reduce_zero_label(raw).tolist() == [[IGNORE_INDEX, 0, 1], [148, 149, IGNORE_INDEX]]
    assert torch.equal(raw, torch.tensor([[0, 1, 2], [149, 150, 0]]))  # input left untouched


def test_items_are_reduced_exactly_once(ade):
    stem = "ADE_train_00000001"
    raw = _raw(*size_of(stem))
    write_l_png(ade / ANN / "training" / f"{stem}.png", raw)
    ds = ADE20KSegmentation(ade, "training")
    image, mask = ds[ds.ids.index(stem)]
    assert image.dtype == torch.uint8 and image.shape == (3, *raw.shape)
    expected = torch.from_numpy(raw.astype(np.int64)) - 1
    expected[torch.from_numpy(raw) == 0] = IGNORE_INDEX
    assert torch.equal(mask, expected)
    assert set(mask.unique().tolist()) == {0, 76, 149, IGNORE_INDEX}  # raw {1, 77, 150, 0}
    # with transforms the reduced mask goes through untouched in value (not reduced again)
    ds_t = ADE20KSegmentation(ade, "training", transforms=train_transforms(8, (1.0, 1.0), "flip"))
    _, y = ds_t[ds.ids.index(stem)]
    assert set(y.unique().tolist()) <= {0, 76, 149, IGNORE_INDEX}


def test_splits_aliases_and_counts(ade):
    assert len(ADE20KSegmentation(ade, "training")) == 3
    assert ADE20KSegmentation(ade, "train").ids == ADE20KSegmentation(ade, "training").ids
    assert len(ADE20KSegmentation(ade, "val")) == 2
    with pytest.raises(ValueError, match="split must be one of.*'validation'"):
        ADE20KSegmentation(ade, "test")


def test_classes_and_palette():
    assert len(ADE20K_CLASSES) == 150 and len(set(ADE20K_CLASSES)) == 150
    assert ADE20K_CLASSES[:5] == ("wall", "building", "sky", "floor", "tree")
    assert ADE20K_CLASSES[-2:] == ("clock", "flag")
    assert len(ADE20K_PALETTE) == 150 and len(set(ADE20K_PALETTE)) == 150
    assert (0, 0, 0) not in ADE20K_PALETTE
    assert ADE20KDataModule.num_classes == 150


def test_missing_and_wrong_root(tmp_path, ade):
    with pytest.raises(
        FileNotFoundError, match=r"(?s)nowhere does not exist.*ADEChallengeData2016.zip"
    ):
        ADE20KSegmentation(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"(?s)wrong layout.*CONTAINS ADEChallengeData2016"):
        ADE20KSegmentation(ade / "ADEChallengeData2016")


def test_unpaired_files_are_named(ade):
    (ade / ANN / "training" / "ADE_train_00000002.png").unlink()
    write_l_png(ade / ANN / "training" / "ADE_train_00000099.png", np.zeros((4, 4)))
    with pytest.raises(FileNotFoundError) as e:
        ADE20KSegmentation(ade, "training")
    msg = str(e.value)
    assert "2 file(s) have no partner" in msg
    assert "images/training/ADE_train_00000002.jpg" in msg
    assert "annotations/training/ADE_train_00000099.png" in msg


def test_bad_values_size_and_skip(ade, caplog):
    stem = "ADE_train_00000002"
    raw = _raw(*size_of(stem))
    raw[1, 1] = 151
    raw[2, 2] = 200
    write_l_png(ade / ANN / "training" / f"{stem}.png", raw)
    ds = ADE20KSegmentation(ade, "training")
    with pytest.raises(CorruptSampleError, match=rf"{stem}.png: label values \[151, 200\].*0..150"):
        ds[1]
    assert 200 - 1 in ADE20KSegmentation(ade, "training", check_labels=False)[1][1]
    write_jpeg(ade / IMG / "training" / f"{stem}.jpg", np.zeros((5, 5, 3), np.uint8))
    with pytest.raises(CorruptSampleError, match=rf"{stem}.jpg is 5×5 .*{stem}.png is"):
        ds[1]
    skipping = ADE20KSegmentation(ade, "training", skip_corrupt=True)
    with caplog.at_level(logging.WARNING, logger="datamodules"):
        assert torch.equal(skipping[1][1], skipping[2][1])
    assert skipping.skipped == 1 and any(stem in r.message for r in caplog.records)


def test_ade20k_datamodule_fast_dev_run(ade):
    dm = ADE20KDataModule(str(ade), batch_size=2, crop_size=(12, 20), num_workers=0)
    seen = fast_dev_run(dm)
    assert dm.train_size == 3
    train = [s for s in seen if s[0] == "train"]
    val = [s for s in seen if s[0] == "val"]
    assert train[0][1:4] == ((2, 3, 12, 20), (2, 12, 20), torch.int64)
    assert train[0][4] <= set(range(150)) | {IGNORE_INDEX}
    assert val[0][2] == (1, *size_of("ADE_val_00000001"))
    assert IGNORE_INDEX in val[0][4] and 149 in val[0][4] and 150 not in val[0][4]


def test_two_images_sharing_a_stem_are_named(ade):
    img = ade / IMG / "training"
    write_jpeg(img / "ADE_train_00000002.jpeg", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError) as e:
        ADE20KSegmentation(ade, "training")
    msg = str(e.value)
    assert "share a stem" in msg
    assert str(img / "ADE_train_00000002.jpeg") in msg and str(img / "ADE_train_00000002.jpg") in msg
    ADE20KSegmentation(ade, "validation")  # the other split is unaffected
