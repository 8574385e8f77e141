"""The configured seed reaches every random draw of the resumable loader: the per-sample augmentation seeds and the
base seed of the DataLoader workers (ovs.data.sampler)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset, get_worker_info

from ovs.data import ResumableDataLoader, ResumableSampler

N = 6


def spec_seed(seed: int, epoch: int, position: int) -> int:
    """The documented augmentation seed: a 63-bit draw of numpy's SeedSequence over (seed, epoch, position)."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1, np.uint64)[0] >> 1)


def test_augmentation_seeds_follow_the_configured_seed() -> None:
    seeds = {}
    for base in (3, 4):
        sampler = ResumableSampler(TensorDataset(torch.arange(N)), seed=base)
        seeds[base] = [index.seed for index in sampler]
        assert seeds[base] == [spec_seed(base, 0, p) for p in range(N)]
    assert not set(seeds[3]) & set(seeds[4])  # two configured seeds: disjoint augmentations


class WorkerSeed(Dataset):
    """Returns the torch seed of the worker process that loads the sample."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, index: int) -> int:
        info = get_worker_info()
        assert info is not None, "expected to run in a worker"
        return info.seed - info.id  # the iterator's base seed (worker seed = base seed + worker id)


def base_seeds(seed: int, epochs: int) -> list[int]:
    """The workers' base seed of each epoch of a fresh loader with ``seed`` (one worker, one batch per epoch)."""
    dataset = WorkerSeed()
    loader = ResumableDataLoader(dataset, ResumableSampler(dataset, seed=seed), batch_size=N, num_workers=1)
    out = []
    for _ in range(epochs):
        (batch,) = list(loader)
        assert len(set(batch.tolist())) == 1
        out.append(int(batch[0]))
    return out


def test_worker_seeds_depend_on_seed_and_epoch_not_on_the_global_rng() -> None:
    torch.manual_seed(0)
    first = base_seeds(3, 2)
    torch.manual_seed(1)  # the global RNG plays no part
    assert base_seeds(3, 2) == first
    assert first[0] != first[1]  # a new epoch re-seeds the workers' augmentations
    other = base_seeds(4, 1)
    assert other[0] != first[0]  # so does another configured seed (same epoch)
