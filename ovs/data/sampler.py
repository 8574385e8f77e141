"""Seeded, resumable training sampler and DataLoader: a checkpoint taken mid-epoch resumes the same data order.

Lightning 2.x saves ``state_dict()`` of every training DataLoader that implements the ``state_dict`` /
``load_state_dict`` pair (``FitLoop.on_save_checkpoint`` -> ``CombinedLoader._state_dicts``) and calls
``load_state_dict`` on resume before the first ``iter()`` of the loader (``FitLoop.setup_data``).
:class:`ResumableDataLoader` implements that pair; its state is the epoch and the number of samples of that epoch
already yielded to the training loop, and the next iteration skips them.

Distributed training: Lightning (``use_distributed_sampler=True``, the default) replaces or wraps the sampler of a
training DataLoader unless it already is a :class:`~torch.utils.data.DistributedSampler`
(``_DataConnector._requires_distributed_sampler``); a default ``RandomSampler`` / ``SequentialSampler`` is replaced
by a ``DistributedSampler``, any other sampler is wrapped by ``DistributedSamplerWrapper``. Both would lose the
resumable state, so :class:`ResumableSampler` subclasses ``DistributedSampler`` and splits the epoch between ranks
itself.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class SeededIndex(int):
    """A dataset index that carries the seed of its sample's random augmentation.

    :class:`ResumableSampler` yields these; a dataset passes :func:`augmentation_generator` of the index to its
    training transforms. The seed is a function of (sampler seed, epoch, position in the epoch), so a sample's
    augmentation is the same whichever worker process loads it, however many workers there are, and whether or not
    the run was resumed mid-epoch.
    """

    seed: int

    def __new__(cls, index: int, seed: int) -> SeededIndex:
        obj = super().__new__(cls, index)
        obj.seed = seed
        return obj

    def __reduce__(self) -> tuple[type[SeededIndex], tuple[int, int]]:
        return SeededIndex, (int(self), self.seed)


def augmentation_generator(index: int) -> torch.Generator | None:
    """The generator of a :class:`SeededIndex`'s augmentation; ``None`` (the global RNG) for a plain index."""
    if isinstance(index, SeededIndex):
        return torch.Generator().manual_seed(index.seed)
    return None


class ResumableSampler(DistributedSampler):
    """Seeded shuffling sampler that can start an epoch after its first ``skip`` indices.

    The permutation of epoch ``e`` is ``torch.randperm(n, generator=torch.Generator().manual_seed(seed + e))``
    (that of :class:`~torch.utils.data.DistributedSampler`); it is padded with its first indices to a multiple of
    the world size and rank ``r`` takes ``permutation[r::world_size]``, so every rank gets ``len(self)`` indices.
    Indices are yielded as :class:`SeededIndex` whose augmentation seed is drawn from ``(seed, e, p)``, ``p`` the
    position in the padded permutation (a ``numpy`` ``SeedSequence``).

    Args:
        dataset: sampled dataset (only its length is used).
        seed: base seed of the per-epoch permutations.
        shuffle: ``False`` walks the dataset in order (still split between ranks and resumable).
        num_replicas: world size (default: ``torch.distributed``'s when initialised, else 1).
        rank: this process' rank (default: ``torch.distributed``'s when initialised, else 0).
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if distributed else 1
        if rank is None:
            rank = dist.get_rank() if distributed else 0
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.skip = 0
        """Indices of this rank's share of the epoch not to yield again (set by :class:`ResumableDataLoader`)."""

    def __iter__(self) -> Iterator[SeededIndex]:
        positions = itertools.count(self.rank, self.num_replicas)  # of this rank's indices in the padded permutation
        seeded = (SeededIndex(i, self.sample_seed(p)) for i, p in zip(super().__iter__(), positions))
        return itertools.islice(seeded, self.skip, None)

    def sample_seed(self, position: int) -> int:
        """Augmentation seed of the sample at ``position`` of the current epoch's padded permutation."""
        return int(np.random.SeedSequence([self.seed, self.epoch, position]).generate_state(1, np.uint64)[0] >> 1)


class ResumableDataLoader(DataLoader):
    """DataLoader over a :class:`ResumableSampler` whose position in the epoch is saved in checkpoints.

    It counts the samples of the current epoch it has yielded to the training loop (not those its workers have
    prefetched, so the count is exact with ``num_workers > 0``). The epoch advances when the last batch of an
    epoch is yielded, and every iteration starts at ``(epoch, consumed)``: after :meth:`load_state_dict`, the next
    iteration skips the consumed part of that epoch's permutation. The loader owns the epoch: it sets the
    sampler's epoch (overriding Lightning's ``set_epoch``, which gives the same value) when an iteration starts.
    The iteration does not consume the global RNG (its workers' base seed is drawn from ``seed + epoch``), and
    every sample's augmentation is seeded by its :class:`SeededIndex`, so a run resumed mid-epoch loads the same
    augmented samples as an uninterrupted one, with any ``num_workers``.

    Args:
        dataset: the training dataset.
        sampler: its resumable sampler.
        batch_size: samples per batch (batching by a ``batch_sampler`` is not supported).
        **kwargs: other :class:`~torch.utils.data.DataLoader` arguments (``drop_last``, ``num_workers``, ...; not
            ``generator``, which every iteration replaces).
    """

    def __init__(self, dataset: Dataset[Any], sampler: ResumableSampler, batch_size: int = 1, **kwargs: Any) -> None:
        if not isinstance(sampler, ResumableSampler):
            raise TypeError(f"ResumableDataLoader needs a ResumableSampler, got {type(sampler).__name__}.")
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self.epoch = 0
        self.consumed = 0

    def _epoch_samples(self) -> int:
        """Samples of this rank's epoch that the loop receives (``drop_last`` leaves out a partial batch)."""
        assert self.batch_size is not None
        return min(len(self) * self.batch_size, len(self.sampler))

    def __iter__(self) -> Iterator[Any]:
        """Yield the rest of epoch :attr:`epoch` from sample :attr:`consumed` on, counting what is yielded."""
        assert isinstance(self.sampler, ResumableSampler) and self.batch_size is not None
        self.sampler.set_epoch(self.epoch)
        self.sampler.skip = self.consumed
        # The iterator draws its workers' base seed from ``self.generator``, by default from the global RNG: one
        # draw more in a run resumed mid-epoch than in an uninterrupted one. Seed it from the epoch instead.
        self.generator = torch.Generator().manual_seed(self.sampler.seed + self.epoch)
        total = self._epoch_samples()
        for batch in super().__iter__():
            self.consumed = min(self.consumed + self.batch_size, total)
            if self.consumed == total:
                self.epoch, self.consumed = self.epoch + 1, 0
            yield batch

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "consumed"}``: the epoch and how many of its samples (this rank's) were yielded."""
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Restore a :meth:`state_dict`; the next iteration resumes there."""
        assert self.batch_size is not None
        if state_dict["consumed"] % self.batch_size:
            raise ValueError(f"consumed={state_dict['consumed']} is not a whole number of batches.")
        self.epoch = int(state_dict["epoch"])
        self.consumed = int(state_dict["consumed"])
