"""Resumable training order (ovs.data.sampler): exact mid-epoch resume, worker-safe counting, rank partition."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice
from pathlib import Path

import pickle

import pytest
import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DistributedSampler, TensorDataset

from ovs.data import ResumableDataLoader, ResumableSampler, SeededIndex, augmentation_generator

N = 10
"""Dataset size: 5 batches of 2 per epoch."""


def loader(seed: int = 3, batch_size: int = 2, num_workers: int = 0, **kwargs: object) -> ResumableDataLoader:
    """Loader over ``0 .. N-1`` (each batch: a tensor of sample indices)."""
    dataset = TensorDataset(torch.arange(N))
    sampler = ResumableSampler(dataset, seed=seed, **kwargs)  # type: ignore[arg-type]
    return ResumableDataLoader(dataset, sampler=sampler, batch_size=batch_size, num_workers=num_workers)


def indices(batches: Iterable[list[torch.Tensor]]) -> list[int]:
    """The sample indices of ``batches``, in order."""
    return [int(i) for (batch,) in batches for i in batch]


def test_epoch_permutation_is_seeded_randperm() -> None:
    data = loader(seed=3)
    for epoch in range(2):
        expected = torch.randperm(N, generator=torch.Generator().manual_seed(3 + epoch)).tolist()
        assert indices(data) == expected
    assert data.state_dict() == {"epoch": 2, "consumed": 0}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_state_round_trip_skips_exactly_the_consumed_samples(num_workers: int) -> None:
    uninterrupted = loader()
    epochs = [indices(uninterrupted), indices(uninterrupted)]

    first = loader(num_workers=num_workers)
    assert indices(first) == epochs[0]
    iterator = iter(first)
    consumed = indices(islice(iterator, 3))  # the workers have prefetched further than these 3 batches
    state = first.state_dict()
    assert state == {"epoch": 1, "consumed": 6}
    del iterator

    resumed = loader(num_workers=num_workers)
    resumed.load_state_dict(state)
    assert len(resumed) == N // 2  # the epoch length Lightning counts batches against is unchanged
    assert consumed + indices(resumed) == epochs[1]
    assert resumed.state_dict() == {"epoch": 2, "consumed": 0}


class Augmented(torch.utils.data.Dataset):
    """Sample ``i`` -> ``(i, one random draw of its augmentation generator)``, like a training transform."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, index: int) -> tuple[int, float]:
        return int(index), float(torch.rand((), generator=augmentation_generator(index)))


def augmented(num_workers: int, **kwargs: object) -> ResumableDataLoader:
    dataset = Augmented()
    sampler = ResumableSampler(dataset, seed=3, **kwargs)  # type: ignore[arg-type]
    return ResumableDataLoader(dataset, sampler=sampler, batch_size=2, num_workers=num_workers)


def draws(batches: Iterable[list[torch.Tensor]]) -> list[tuple[int, float]]:
    return [(int(i), float(x)) for index, draw in batches for i, x in zip(index, draw)]


def test_seeded_index_is_an_int_that_pickles_with_its_seed() -> None:
    index = SeededIndex(7, 12345)
    assert index == 7 and [0, 1, 2, 3, 4, 5, 6, 7][index] == 7
    copy = pickle.loads(pickle.dumps(index))
    assert isinstance(copy, SeededIndex) and (int(copy), copy.seed) == (7, 12345)
    assert augmentation_generator(7) is None
    assert torch.equal(torch.rand(3, generator=augmentation_generator(index)),
                       torch.rand(3, generator=torch.Generator().manual_seed(12345)))


def test_augmentation_seeds_depend_on_seed_epoch_and_position_only() -> None:
    sampler = ResumableSampler(TensorDataset(torch.arange(N)), seed=3)
    first = [(int(i), i.seed) for i in sampler]
    assert first == [(int(i), i.seed) for i in sampler]  # same epoch, same seeds
    assert len({seed for _, seed in first}) == N
    sampler.set_epoch(1)
    assert not {seed for _, seed in first} & {i.seed for i in sampler}  # a new epoch draws new augmentations
    ranks = [ResumableSampler(TensorDataset(torch.arange(N)), seed=3, num_replicas=2, rank=r) for r in range(2)]
    assert sorted(i.seed for rank in ranks for i in rank) == sorted(seed for _, seed in first)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_augmentation_is_resumed_exactly_with_workers(num_workers: int) -> None:
    uninterrupted = augmented(num_workers=0)
    epochs = [draws(uninterrupted), draws(uninterrupted)]
    assert draws(augmented(num_workers=2)) == epochs[0]  # independent of the number of workers
    killed = augmented(num_workers)
    draws(killed)
    consumed = draws(islice(iter(killed), 2))
    resumed = augmented(num_workers)
    resumed.load_state_dict(killed.state_dict())
    assert consumed + draws(resumed) == epochs[1]


def test_iteration_leaves_the_global_rng_alone() -> None:
    """A resumed run creates its iterator at another step than an uninterrupted one: it must not draw from it."""
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    next(iter(loader()))
    assert torch.equal(torch.rand(1), expected)


def test_load_state_dict_rejects_partial_batches() -> None:
    with pytest.raises(ValueError, match="whole number of batches"):
        loader().load_state_dict({"epoch": 0, "consumed": 3})


def test_ranks_partition_the_epoch() -> None:
    ranks = [loader(batch_size=1, num_replicas=2, rank=rank) for rank in range(2)]
    # a DistributedSampler subclass, so Lightning's use_distributed_sampler neither replaces nor wraps it
    assert isinstance(ranks[0].sampler, DistributedSampler)
    shares = [indices(rank) for rank in ranks]
    assert sorted(shares[0] + shares[1]) == list(range(N))
    assert shares[0] == torch.randperm(N, generator=torch.Generator().manual_seed(3)).tolist()[0::2]
    padded = [loader(batch_size=1, num_replicas=3, rank=rank) for rank in range(3)]
    assert [len(rank) for rank in padded] == [4, 4, 4]  # 10 samples padded to 12, as DistributedSampler
    assert set(sum((indices(rank) for rank in padded), [])) == set(range(N))


class Regression(LightningModule):
    """A linear layer fitted by SGD on the resumable loader: its weights depend on the exact batch order."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(1, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x = batch[0].float().unsqueeze(1)
        return ((self.layer(x) - torch.sin(x)) ** 2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self) -> ResumableDataLoader:
        return loader()


def fit(max_steps: int, directory: Path, ckpt: Path | None = None) -> Regression:
    model = Regression()
    trainer = Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=directory,
        callbacks=[ModelCheckpoint(dirpath=directory, save_last=True, every_n_train_steps=1)],
    )
    trainer.fit(model, ckpt_path=ckpt)
    assert trainer.global_step == max_steps
    return model


@pytest.mark.parametrize("kill_at", [3, 7])  # mid-epoch 0 and mid-epoch 1 (5 steps per epoch)
def test_lightning_mid_epoch_resume_equals_uninterrupted_run(tmp_path: Path, kill_at: int) -> None:
    uninterrupted = fit(12, tmp_path / "uninterrupted")
    killed = fit(kill_at, tmp_path / "killed")
    checkpoint = torch.load(tmp_path / "killed" / "last.ckpt", weights_only=True)
    assert checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": kill_at // 5, "consumed": 2 * (kill_at % 5)}
    ]
    resumed = fit(12, tmp_path / "resumed", ckpt=tmp_path / "killed" / "last.ckpt")
    for name, parameter in resumed.named_parameters():
        torch.testing.assert_close(parameter, dict(uninterrupted.named_parameters())[name], atol=1e-6, rtol=0)
        assert not torch.equal(parameter, dict(killed.named_parameters())[name])
