"""The LightningDataModule every dataset here (real and synthetic) derives from.

A subclass declares ``num_classes``, ``class_names`` and ``palette`` and implements
``make_datasets(stage)``, setting raw datasets ``self.train_set`` / ``self.val_set`` (and
optionally ``self.test_set``, which defaults to the validation set) whose items are
(uint8 3×H×W image, int64 H×W mask). This class adds the joint transforms and the loaders:

- train: random crops of ``crop_size`` (``augment`` recipe, see ``datamodules.transforms``),
  ``drop_last``, and ``seed_worker`` giving every worker of every rank its own deterministic
  numpy/random/torch seeds. The shuffle is ``ResumableShuffleSampler`` (a permutation of
  ``seed`` and the epoch, split across DDP ranks) in torchdata's ``StatefulDataLoader``, whose
  position Lightning checkpoints: a run resumed mid-epoch continues with the very next batch;
- val/test: full images, original-resolution masks, no shuffling; ``pad_collate`` pads a batch
  to its largest image (image with 0 after normalisation, i.e. the mean colour, mask with
  ``IGNORE_INDEX``), so ``val_batch_size=1`` (the default) evaluates exactly as the papers do.
  Under DDP they use ``UnpaddedDistributedSampler``: rank r gets indices r, r+W, r+2W, ... and
  nothing is duplicated, so each image is counted once (VOC val has an odd 1,449 images;
  torch's ``DistributedSampler`` would repeat one). Ranks may then run different numbers of
  validation steps: metrics must sync once per epoch (torchmetrics' confusion matrix), never
  with a per-step ``self.log(..., sync_dist=True)``, which would wait for the missing step.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from datamodules.constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from datamodules.transforms import AUGMENTATIONS, eval_transforms, train_transforms

__all__ = [
    "SegmentationDataModule",
    "ResumableShuffleSampler",
    "TransformedDataset",
    "UnpaddedDistributedSampler",
    "pad_collate",
    "seed_worker",
]

log = logging.getLogger(__name__)


class UnpaddedDistributedSampler(DistributedSampler):
    """Rank ``r`` of ``W`` gets indices ``r, r+W, ...``: no padding, no duplicates, in order.

    A ``DistributedSampler`` subclass so that Lightning keeps it (``_requires_distributed_sampler``
    in lightning/pytorch/trainer/connectors/data_connector.py only replaces samplers that are not
    ``DistributedSampler`` instances). For evaluation only: ranks may get one item less.
    """

    def __init__(self, dataset: Dataset, num_replicas: int | None = None, rank: int | None = None):
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False
        )
        self.total_size = len(self.dataset)
        self.num_samples = len(range(self.rank, self.total_size, self.num_replicas))

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


class ResumableShuffleSampler(DistributedSampler):
    """The training shuffle: a permutation of ``(seed, epoch)`` alone (``DistributedSampler``'s,
    so rank ``r`` of ``W`` takes every W-th index of it), whose iterator can save and restore its
    epoch and position.

    torchdata's ``StatefulDataLoader`` stores the sampler iterator's ``state_dict`` in every
    checkpoint (through Lightning) and restores it on resume, so training continues with the
    very next batch. A permutation drawn from a live generator would not do: after a resume
    the generator no longer matches an uninterrupted run's at the next epoch (it also seeds the
    loader's workers). Being a ``DistributedSampler`` also means Lightning keeps it under DDP
    instead of substituting one whose mid-epoch position it cannot restore. Lightning calls
    ``set_epoch`` at every epoch start.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)

    def __iter__(self) -> _EpochIndices:
        return _EpochIndices(self, self.epoch)


class _EpochIndices:
    """This rank's indices of one epoch, with ``state_dict``/``load_state_dict`` (epoch, position)."""

    def __init__(self, sampler: ResumableShuffleSampler, epoch: int) -> None:
        self.sampler, self.position = sampler, 0
        self._start(epoch)

    def _start(self, epoch: int) -> None:
        current, self.sampler.epoch = self.sampler.epoch, epoch
        try:
            self.indices = list(DistributedSampler.__iter__(self.sampler))
        finally:
            self.sampler.epoch = current
        self.epoch = epoch

    def __iter__(self) -> _EpochIndices:
        return self

    def __next__(self) -> int:
        if self.position >= len(self.indices):
            raise StopIteration
        self.position += 1
        return self.indices[self.position - 1]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._start(state["epoch"])
        self.position = state["position"]


def seed_worker(worker_id: int, rank: int = 0) -> None:
    """DataLoader ``worker_init_fn``: seed numpy, random and torch from the worker's torch seed
    (the loader's base seed, drawn from its seeded generator, + ``worker_id``) and the global
    ``rank``, so workers and ranks differ and a rerun with the same seed repeats exactly."""
    seq = np.random.SeedSequence([torch.initial_seed(), rank, worker_id])
    s = [int(x) for x in seq.generate_state(4)]
    torch.manual_seed((s[0] << 32) | s[1])
    random.seed((s[2] << 32) | s[3])
    np.random.seed(s[2:4])


def pad_collate(batch: Sequence[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """Stack (image, mask) pairs — or (image, mask, pixel weights) triples — padding bottom/right
    to the largest H and W in the batch: images with 0 (the mean colour once normalised), masks
    with ``IGNORE_INDEX``, weights with 0."""
    columns = list(zip(*batch, strict=True))
    masks = columns[1]
    h = max(m.shape[-2] for m in masks)
    w = max(m.shape[-1] for m in masks)
    if all(tuple(m.shape[-2:]) == (h, w) for m in masks):
        return tuple(torch.stack(c) for c in columns)
    fills = (0, IGNORE_INDEX, 0)
    out = []
    for column, fill in zip(columns, fills, strict=False):
        stacked = column[0].new_full((len(column), *column[0].shape[:-2], h, w), fill)
        for i, x in enumerate(column):
            stacked[i, ..., : x.shape[-2], : x.shape[-1]] = x
        out.append(stacked)
    return tuple(out)


class TransformedDataset(Dataset):
    """Apply a joint ``transform(image, mask)`` on top of a raw dataset; with ``pixel_weights``
    (a picklable ``mask -> H×W float`` function) each item also carries the weights of its
    transformed mask, computed where the item is made (in the loader's workers)."""

    def __init__(self, dataset: Dataset, transform, pixel_weights=None) -> None:
        self.dataset = dataset
        self.transform = transform
        self.pixel_weights = pixel_weights

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, mask = self.transform(*self.dataset[index])
        if self.pixel_weights is None:
            return image, mask
        return image, mask, self.pixel_weights(mask)


class SegmentationDataModule(L.LightningDataModule):
    """Common base; see the module docstring. Subclasses implement ``make_datasets``.

    Args:
        batch_size: training batch size per process.
        val_batch_size: evaluation batch size per process (1 = no padding inside a batch).
        crop_size: training crop, int or (height, width); None trains on whole images (a batch
            of several is padded to its largest image by ``pad_collate``).
        scale_range: random scale factors for the "deeplab" and "pspnet" recipes.
        scale_step: None (continuous factors) or the step of the factor grid (DeepLab v3: 0.25).
        augment: "none" | "flip" | "deeplab" | "pspnet" (see ``datamodules.transforms``).
        num_workers: DataLoader worker processes (0 = load in the main process).
        pin_memory: None = ``torch.cuda.is_available()``.
        persistent_workers: keep workers between epochs (only used when ``num_workers > 0``).
        seed: seeds the training shuffle and the workers' augmentation RNGs.

    ``pixel_weights`` (attribute, default None): a picklable ``mask -> H×W float`` function; when
    set before ``setup``, each training item also carries its loss weights, computed in the
    loader's workers rather than in the training step (U-Net's weight map: the runner sets it to
    the module's ``train_pixel_weights()``).
    """

    num_classes: int = 0
    class_names: tuple[str, ...] = ()
    palette: list[tuple[int, int, int]] = []
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __init__(
        self,
        batch_size: int = 8,
        val_batch_size: int = 1,
        crop_size: int | tuple[int, int] | None = 321,
        scale_range: tuple[float, float] = (0.5, 2.0),
        augment: str = "deeplab",
        num_workers: int = 4,
        scale_step: float | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
        for name, value in (("batch_size", batch_size), ("val_batch_size", val_batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(
                f"scale_range must be (low, high) with 0 < low <= high, got {scale_range}"
            )
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.crop_size = crop_size
        self.scale_range = tuple(scale_range)
        self.scale_step = scale_step
        self.augment = augment
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.seed = seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.train_size: int | None = None
        self.pixel_weights = None
        self._train = self._val = self._test = None

    # -- for subclasses -------------------------------------------------------------------
    def make_datasets(self, stage: str | None) -> None:
        """Set ``self.train_set`` (for stage None/"fit"), ``self.val_set`` and optionally
        ``self.test_set``: raw datasets of (uint8 3×H×W, int64 H×W) pairs."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_datasets(stage)")

    def build_train_transform(self):
        return train_transforms(
            self.crop_size, self.scale_range, self.augment, mean=self.mean, std=self.std,
            scale_step=self.scale_step,
        )

    def build_eval_transform(self):
        return eval_transforms(self.mean, self.std)

    # -- Lightning hooks ------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        self.make_datasets(stage)
        if stage in (None, "fit"):
            if self.train_set is None:
                raise RuntimeError(
                    f"{type(self).__name__}.make_datasets({stage!r}) set no train_set"
                )
            self.train_size = len(self.train_set)
            log.info("%s: %d training images", type(self).__name__, self.train_size)
            self._train = TransformedDataset(self.train_set, self.build_train_transform(), self.pixel_weights)
        if self.val_set is None:
            raise RuntimeError(f"{type(self).__name__}.make_datasets({stage!r}) set no val_set")
        eval_tf = self.build_eval_transform()
        self._val = TransformedDataset(self.val_set, eval_tf)
        test = self.test_set if self.test_set is not None else self.val_set
        self._test = TransformedDataset(test, eval_tf)

    def _dist(self) -> tuple[int, int]:
        """(world_size, global_rank): from torch.distributed when initialised, else the trainer."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size(), torch.distributed.get_rank()
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.world_size > 1:
            return trainer.world_size, trainer.global_rank
        return 1, 0

    def _loader_kwargs(self) -> dict[str, Any]:
        return dict(
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=pad_collate,
        )

    def train_dataloader(self) -> DataLoader:
        if self._train is None:
            raise RuntimeError("call setup('fit') before train_dataloader()")
        if len(self._train) < self.batch_size:
            raise ValueError(
                f"{type(self).__name__}: the training set has {len(self._train)} items, fewer than "
                f"batch_size={self.batch_size}; with drop_last=True no batch would be produced"
            )
        world, rank = self._dist()
        # A StatefulDataLoader: Lightning stores its position in every checkpoint, so a run
        # resumed mid-epoch continues with the very next batch (see ResumableShuffleSampler).
        return StatefulDataLoader(
            self._train,
            batch_size=self.batch_size,
            sampler=ResumableShuffleSampler(self._train, world, rank, self.seed),
            drop_last=True,
            generator=torch.Generator().manual_seed(self.seed),
            worker_init_fn=functools.partial(seed_worker, rank=rank) if self.num_workers else None,
            **self._loader_kwargs(),
        )

    def _eval_loader(self, dataset: Dataset | None, name: str) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"call setup() before {name}_dataloader()")
        world, rank = self._dist()
        sampler = UnpaddedDistributedSampler(dataset, world, rank) if world > 1 else None
        return DataLoader(
            dataset,
            batch_size=self.val_batch_size,
            shuffle=False,
            sampler=sampler,
            # Its own generator: creating the iterator then draws no seed from the global RNG, so
            # evaluating (or Lightning skipping an evaluation when it resumes) leaves the
            # training randomness untouched and a resumed run repeats an uninterrupted one.
            generator=torch.Generator().manual_seed(0),
            **self._loader_kwargs(),
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self._val, "val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self._test, "test")
