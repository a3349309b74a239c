"""SegmentationDataModule plumbing: loaders, collation, DDP evaluation sampler, worker seeds."""

from __future__ import annotations

import random
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.base import (
    ResumableShuffleSampler,
    SegmentationDataModule,
    UnpaddedDistributedSampler,
    pad_collate,
    seed_worker,
)
from datamodules.constants import IGNORE_INDEX


class _Sizes(Dataset):
    """Raw (uint8 image, int64 mask) items of varying size."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        h, w = 10 + i, 14 + 2 * i
        return torch.full((3, h, w), 100, dtype=torch.uint8), torch.full((h, w), i % 4)


class _DM(SegmentationDataModule):
    num_classes = 4
    class_names = ("a", "b", "c", "d")
    palette = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)]

    def __init__(self, n_train: int = 6, n_val: int = 5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.n_train, self.n_val = n_train, n_val

    def make_datasets(self, stage):
        self.train_set, self.val_set = _Sizes(self.n_train), _Sizes(self.n_val)


def test_unpadded_sampler_splits_exactly():
    data = list(range(7))
    parts = [list(UnpaddedDistributedSampler(data, num_replicas=2, rank=r)) for r in range(2)]
    assert parts == [[0, 2, 4, 6], [1, 3, 5]]
    assert [len(UnpaddedDistributedSampler(data, 2, r)) for r in range(2)] == [4, 3]
    three = [list(UnpaddedDistributedSampler(data, 3, r)) for r in range(3)]
    flat = sorted(i for p in three for i in p)
    assert flat == data  # union exact, no duplicates
    # torch's own sampler would pad 7 items to 8 with a duplicate: the reason this class exists
    torch_parts = [
        list(torch.utils.data.DistributedSampler(data, 2, r, shuffle=False)) for r in range(2)
    ]
    assert sum(map(len, torch_parts)) == 8


def test_lightning_keeps_our_sampler_under_ddp():
    """Lightning only injects a sampler when the loader's is not a DistributedSampler."""
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    assert trainer._accelerator_connector.is_distributed
    data = list(range(7))
    ours = DataLoader(data, sampler=UnpaddedDistributedSampler(data, 2, 0))
    assert not trainer._data_connector._requires_distributed_sampler(ours)
    assert trainer._data_connector._requires_distributed_sampler(DataLoader(data))


def test_eval_loaders_use_unpadded_sampler_when_distributed():
    dm = _DM(num_workers=0, batch_size=2)
    dm.setup("fit")
    assert dm.val_dataloader().sampler.__class__ is not UnpaddedDistributedSampler
    dm.trainer = SimpleNamespace(world_size=2, global_rank=1)
    loader = dm.val_dataloader()
    assert isinstance(loader.sampler, UnpaddedDistributedSampler)
    assert list(loader.sampler) == [1, 3]
    assert list(dm.test_dataloader().sampler) == [1, 3]  # test set defaults to val


def test_pad_collate_pads_image_with_zero_and_mask_with_255():
    a = (torch.ones(3, 4, 5), torch.full((4, 5), 2))
    b = (torch.ones(3, 6, 3), torch.full((6, 3), 1))
    x, y = pad_collate([a, b])
    assert x.shape == (2, 3, 6, 5) and y.shape == (2, 6, 5) and y.dtype == torch.int64
    assert x[0, :, 4:].eq(0).all() and y[0, 4:].eq(IGNORE_INDEX).all()
    assert x[1, :, :, 3:].eq(0).all() and y[1, :, 3:].eq(IGNORE_INDEX).all()
    assert y[0, :4, :5].eq(2).all() and y[1, :6, :3].eq(1).all()


def test_loaders_train_crops_and_eval_full_images():
    dm = _DM(num_workers=0, batch_size=2, crop_size=8, val_batch_size=2)
    dm.setup("fit")
    assert dm.train_size == 6
    train = dm.train_dataloader()
    assert train.drop_last and isinstance(train.sampler, ResumableShuffleSampler) and train.sampler.shuffle
    assert len(train) == 3
    x, y = next(iter(train))
    assert x.shape == (2, 3, 8, 8) and y.shape == (2, 8, 8)
    val = dm.val_dataloader()
    assert isinstance(val.sampler, torch.utils.data.SequentialSampler)
    batches = list(val)
    assert [tuple(b[1].shape) for b in batches] == [(2, 11, 16), (2, 13, 20), (1, 14, 22)]
    assert batches[0][1][0, 10:].eq(IGNORE_INDEX).all()  # the smaller image's padding


def test_shuffle_is_seeded():
    orders = []
    for seed in (0, 0, 1):
        dm = _DM(n_train=12, num_workers=0, batch_size=1, crop_size=4, seed=seed)
        dm.setup("fit")
        orders.append(list(iter(dm.train_dataloader().batch_sampler)))
    assert orders[0] == orders[1] != orders[2]


def test_hyperparameters_include_subclass_arguments_and_validation():
    dm = _DM(n_train=3, batch_size=4, augment="pspnet")
    assert dm.hparams.n_train == 3 and dm.hparams.batch_size == 4 and dm.hparams.augment == "pspnet"
    assert dm.persistent_workers is True and _DM(num_workers=0).persistent_workers is False
    with pytest.raises(ValueError, match="augment"):
        _DM(augment="heavy")
    with pytest.raises(ValueError, match="batch_size"):
        _DM(batch_size=0)
    with pytest.raises(ValueError, match="scale_range"):
        _DM(scale_range=(2.0, 1.0))
    dm = _DM(n_train=2, batch_size=4, num_workers=0)
    dm.setup("fit")
    with pytest.raises(ValueError, match="2 items, fewer than batch_size=4"):
        dm.train_dataloader()


def _draws():
    return (np.random.rand(), random.random(), torch.rand(()).item())


def test_seed_worker_is_deterministic_and_distinct():
    def run(base: int, worker: int, rank: int):
        torch.manual_seed(base + worker)  # what the DataLoader does before worker_init_fn
        seed_worker(worker, rank=rank)
        return _draws()

    assert run(10, 0, 0) == run(10, 0, 0)
    results = {run(10, w, r) for w in range(3) for r in range(2)}
    assert len(results) == 6  # every (worker, rank) pair differs
    assert all(len({x[k] for x in results}) == 6 for k in range(3))  # in every library


class _Draws(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i):
        return torch.tensor([i, *_draws()], dtype=torch.float64)


def test_worker_seeding_through_a_real_loader():
    def epoch(seed: int):
        loader = DataLoader(
            _Draws(),
            batch_size=1,
            num_workers=2,
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(seed),
        )
        return torch.cat(list(loader))

    a, b, c = epoch(0), epoch(0), epoch(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # items 0 and 1 come from different workers: their draws differ in every library
    assert (a[0, 1:] != a[1, 1:]).all()
