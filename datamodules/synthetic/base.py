"""The base dataset of the synthetic tasks: deterministic per-item RNG, tensor conversion, class
metadata. A task subclasses :class:`SyntheticSegmentation`, names itself (``task``, and a
``task_id`` no other task uses) and implements ``_draw(seed_sequence)``.

``materialize(cache_dir)`` generates the whole split once (or reads it from the on-disk cache,
``datamodules.synthetic.cache``) and then serves items from the arrays: the same tensors,
for a copy instead of ~10 ms of drawing per item.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

_SPLITS = {"train": 0, "val": 1, "test": 2}


class SyntheticSegmentation(Dataset):
    """Base class: deterministic per-item RNG, tensor conversion, class metadata."""

    task: str = ""
    task_id: int = 0
    class_names: tuple[str, ...] = ()
    palette: list[tuple[int, int, int]] = []
    default_image_size: int = 128
    min_image_size: int = 64
    # Part of the cache key (with the generator's source and parameters): bump it when items
    # change in a way the source does not show (e.g. data files read by a generator).
    generator_version: int = 1
    _items: np.ndarray | None = None  # N x 4 x H x W uint8 (image, mask) once materialized
    _items_file: Path | None = None  # the cache file backing _items, if any

    def __init__(self, split: str = "train", num_items: int = 100, image_size: int | None = None,
                 seed: int = 0) -> None:
        if split not in _SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(_SPLITS)}")
        image_size = self.default_image_size if image_size is None else int(image_size)
        if image_size < self.min_image_size:
            raise ValueError(f"{self.task!r} needs image_size >= {self.min_image_size}, "
                             f"got {image_size}")
        if num_items < 0:
            raise ValueError(f"num_items must be >= 0, got {num_items}")
        self.split, self.num_items, self.image_size, self.seed = split, num_items, image_size, seed

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return self.num_items

    def seed_sequence(self, index: int) -> np.random.SeedSequence:
        return np.random.SeedSequence((self.task_id, self.seed, _SPLITS[self.split], index))

    def generate(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Item `index` as numpy: (H x W x 3 uint8 image, H x W uint8 mask with 255 = void)."""
        if not 0 <= index < self.num_items:
            raise IndexError(f"index {index} out of range for {self.num_items} items")
        return self._draw(self.seed_sequence(index))

    def _draw(self, seq: np.random.SeedSequence) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def materialize(self, cache_dir: str | os.PathLike | bool | None = None,
                    workers: int | None = None) -> SyntheticSegmentation:
        """Generate all items once, or read them from the cache (``cache_dir``: None = the
        default directory, False = memory only; see ``datamodules.synthetic.cache``), and serve
        ``__getitem__`` from the arrays from now on. Returns self."""
        from datamodules.synthetic.cache import cached_items

        self._items, self._items_file = cached_items(self, cache_dir, workers)
        return self

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if state.get("_items_file") is not None:  # a worker maps the file, not a pickled copy
            state["_items"] = None
        return state

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._items is None and self._items_file is not None:
            self._items = np.load(self._items_file, mmap_mode="r")
        if self._items is not None:
            if not 0 <= index < self.num_items:
                raise IndexError(f"index {index} out of range for {self.num_items} items")
            item = self._items[index]
            return torch.from_numpy(np.array(item[:3])), torch.from_numpy(item[3].astype(np.int64))
        img, mask = self.generate(index)
        return (torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
                torch.from_numpy(mask.astype(np.int64)))
