"""From a run's settings to the things it trains: data sets, batches, network, loss and learning-rate schedule.

:func:`make_dataset`, :func:`make_model` and :func:`make_loss` are the one place that turns a
:class:`~vfu_nb.training.config.TrainConfig` into a data set, a network and a loss (the trainer,
:mod:`vfu_nb.training.runs` and ``tools/bench.py`` use them). The training batches come from
:class:`EpochBatchSampler`: a seeded permutation per epoch, shared out to the DDP processes, that resumes
inside an epoch.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Callable, Optional

import torch
from torch.utils.data import DataLoader, Sampler

from vfu_nb.data.augment import Augmentation
from vfu_nb.data.loader import BatchLoader
from vfu_nb.losses import LossWeights, multitask_loss
from vfu_nb.training.config import TrainConfig
from vfu_nb.training.runtime import Runtime, derive_seed, seed_worker

# ----------------------------------------------------------------------------------------------------------
# Batches


class EpochBatchSampler(Sampler):
    """Yields this rank's share of each global batch of a seeded per-epoch permutation.

    Epoch e permutes ``range(n)`` with a generator seeded by ``derive_seed(seed, e, 0)`` (or keeps the order
    with ``shuffle=False``). Global batches have ``batch_size * world_size`` items; rank r gets items
    ``r::world_size`` of each. With ``drop_last`` (default: when ``world_size > 1``, so every rank runs the same
    number of equal steps) an incomplete last global batch is dropped. ``set_epoch(e, start_batch=k)`` skips
    the first k batches (a resume inside an epoch) without loading them. ``items`` (length n) maps the
    positions to data-set items, e.g. a training subset's ``indices``.
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: Optional[bool] = None, max_batches: Optional[int] = None,
                 items: Optional[list] = None):
        if items is not None and len(items) != n:
            raise ValueError(f"EpochBatchSampler: items has {len(items)} entries for n = {n}")
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.drop_last = world_size > 1 if drop_last is None else drop_last
        self.max_batches = max_batches
        self.items = None if items is None else [int(i) for i in items]
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def global_batches(self) -> list:
        """The global batches of the epoch from ``start_batch`` on (positions, before ``items``)."""
        return self._epoch_batches()[self.start_batch:]

    def skipped_batches(self) -> list:
        """This rank's share of the batches that ``start_batch`` skips, as :meth:`__iter__` would yield them."""
        return [self._share(batch) for batch in self._epoch_batches()[:self.start_batch]]

    def _share(self, batch: list) -> list:
        mine = batch[self.rank::self.world_size]
        return mine if self.items is None else [self.items[i] for i in mine]

    def _epoch_batches(self) -> list:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(derive_seed(self.seed, self.epoch, 0))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        gb = self.batch_size * self.world_size
        batches = [order[i:i + gb] for i in range(0, self.n, gb)]
        if batches and (self.drop_last and len(batches[-1]) < gb):
            batches.pop()
        if self.max_batches is not None:
            batches = batches[:self.max_batches]
        return batches

    def __iter__(self):
        for batch in self.global_batches():
            yield self._share(batch)

    def __len__(self) -> int:
        gb = self.batch_size * self.world_size
        n = self.n // gb if self.drop_last else math.ceil(self.n / gb)
        n = n if self.max_batches is None else min(n, self.max_batches)
        return max(0, n - self.start_batch)


class EpochBatchLoader(BatchLoader):
    """A :class:`vfu_nb.data.loader.BatchLoader` over an :class:`EpochBatchSampler` that resumes exactly inside an
    augmented epoch.

    The augmentations of an epoch come from one stream, drawn batch after batch. When the sampler skips its first
    k batches (``set_epoch(e, start_batch=k)``), their draws are made and dropped before the first batch is
    gathered, so batch k + 1 is augmented as it was in the uninterrupted epoch.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._skipped: list = []

    def __iter__(self):
        self._skipped = self.batch_sampler.skipped_batches() if self.augment else []
        return super().__iter__()

    def gather(self, indices, generator: Optional[torch.Generator] = None) -> dict:
        for batch in self._skipped:
            Augmentation.draw(len(batch), generator)
        self._skipped = []
        return super().gather(indices, generator)


# ----------------------------------------------------------------------------------------------------------
# Data, network, loss, schedule


def make_scheduler(config: TrainConfig, optimizer):
    s = config.lr_schedule
    if s == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs))
    if s == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step_size, gamma=config.lr_gamma)
    if s == "exp":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_gamma)
    return None


def make_dataset(config: TrainConfig, split: str, *, augment: bool = False, uint8: bool = True,
                 progress: bool = False):
    """The ``split`` data set of a run's settings: its root, image size, padding, ``max_items`` subset and cache.

    The one place that turns settings into a data set (the trainer, :func:`vfu_nb.training.runs.dataset_for`).
    """
    from vfu_nb.data.dataset import DeepFashionC

    return DeepFashionC(config.data_root, split, config.image_size, augment=augment, cache=True, uint8=uint8,
                        cache_dir=config.cache_dir, pad_to_square=config.pad_to_square, max_items=config.max_items,
                        subset_seed=config.data_seed, progress=progress)


def build_datasets(config: TrainConfig, rt: Runtime) -> dict:
    """train / val / test data sets (rank 0 builds the image caches first, then the others open them)."""
    def make(split):
        return make_dataset(config, split, augment=config.augment and split == "train",
                            progress=config.progress and rt.is_main)

    if not rt.is_main:
        rt.barrier()
    sets = {split: make(split) for split in ("train", "val", "test")}
    if rt.is_main:
        rt.barrier()
    if config.train_fraction < 1.0:
        sets["train"] = train_subset(sets["train"], config.train_fraction, config.data_seed)
    return sets


def train_subset(dataset, fraction: float, data_seed: int) -> torch.utils.data.Subset:
    """A seeded ``fraction`` of ``dataset`` (at least one item) in data-set order; for one ``data_seed``, a
    smaller fraction is a subset of a larger one."""
    n = len(dataset)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(data_seed, 3)))
    return torch.utils.data.Subset(dataset, sorted(order[:max(1, round(fraction * n))].tolist()))


def make_loaders(config: TrainConfig, rt: Runtime, sets: dict):
    """(training sampler, its loader generator, training loader, {"val", "test"} loaders on rank 0).

    ``loader="batch"``: :class:`EpochBatchLoader`; training batches arrive on the device (augmented there),
    evaluation batches stay on the host (pinned on CUDA) because :func:`vfu_nb.training.loop.evaluate` sends only
    the images over.
    ``loader="items"``: DataLoaders over ``dataset[k]`` with ``rt.num_workers`` worker processes.
    """
    train_set, subset = sets["train"], None
    if isinstance(train_set, torch.utils.data.Subset):        # train_fraction: sample the subset's items
        train_set, subset = train_set.dataset, train_set.indices
    sampler = EpochBatchSampler(len(sets["train"]), config.batch_size, shuffle=True, seed=config.seed, rank=rt.rank,
                                world_size=rt.world, max_batches=config.max_batches, items=subset,
                                # a compiled model sees one batch shape only (no recompile for the last batch)
                                drop_last=rt.distributed or config.compile or config.cuda_graphs)
    loader_gen = torch.Generator()
    eval_samplers = {split: EpochBatchSampler(len(sets[split]), rt.eval_batch_size, shuffle=False)
                     for split in ("val", "test")} if rt.is_main else {}
    if config.loader == "batch":
        train_loader = EpochBatchLoader(train_set, sampler, rt.device, augment=config.augment, generator=loader_gen,
                                        prefetch=2)
        eval_loaders = {split: EpochBatchLoader(sets[split], eval_sampler, "cpu", pin_memory=rt.is_cuda, prefetch=2)
                        for split, eval_sampler in eval_samplers.items()}
        return sampler, loader_gen, train_loader, eval_loaders
    # Persistent workers keep their RNG across epochs, so with augmentation they would make a resumed run
    # differ; without augmentation the workers draw no random numbers and persistence is free.
    common = dict(num_workers=rt.num_workers, pin_memory=rt.is_cuda,
                  worker_init_fn=functools.partial(seed_worker, parent_pid=os.getpid()),
                  persistent_workers=rt.num_workers > 0 and not config.augment)
    if rt.num_workers > 0:
        common["prefetch_factor"] = 4
    train_loader = DataLoader(train_set, batch_sampler=sampler, generator=loader_gen, **common)
    eval_loaders = {split: DataLoader(sets[split], batch_sampler=eval_sampler,
                                      generator=torch.Generator().manual_seed(0), **common)
                    for split, eval_sampler in eval_samplers.items()}
    return sampler, loader_gen, train_loader, eval_loaders


def make_model(config: TrainConfig, num_categories: int, num_attributes: int, device="cpu",
               channels_last: bool = False, pretrained: bool = True) -> torch.nn.Module:
    """The network of a run's settings (``model``, ``image_size``, ``width``, ``backbone``, ``pretrained`` unless
    ``pretrained=False``: a checkpoint is loaded over it) for a vocabulary, on ``device`` in its memory layout.

    The one place that turns settings into a network (the trainer, :func:`vfu_nb.training.runs.load_model`, the
    benchmark).
    """
    from vfu_nb.conventions import NUM_LANDMARKS
    from vfu_nb.models import build_model

    model = build_model(config.model, num_categories, num_attributes, NUM_LANDMARKS, config.image_size, config.width,
                        config.backbone, config.pretrained if pretrained else None).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def make_loss(config: TrainConfig, model: torch.nn.Module, rt: Runtime) -> tuple[LossWeights, Callable]:
    """(the loss weights, ``loss_fn(outputs, batch)``) that train ``model`` with ``config``'s loss settings.

    The landmark weight is 0 for a model without landmark supervision; the loss gets the run's heatmap sigma,
    ``attr_pos_weight`` (made once on the device, not per step) and, under DDP, the all-reduced label counts.
    """
    weights = dataclasses.replace(config.loss_weights)
    if not getattr(model, "has_landmark_branch", True) or not getattr(model, "landmark_supervised", True):
        weights.landmark = 0.0
    pos_weight = None if config.attr_pos_weight is None else \
        torch.full((), float(config.attr_pos_weight), device=rt.device)
    loss_fn = functools.partial(multitask_loss, weights=weights, heatmap_sigma=rt.heatmap_sigma,
                                attr_pos_weight=pos_weight, reduce_counts=rt.all_mean if rt.distributed else None)
    return weights, loss_fn


def build_model_and_loss(config: TrainConfig, rt: Runtime, annotations):
    """(model on the device, its metadata for checkpoints, loss weights, the loss with its fixed arguments)."""
    from vfu_nb.models import count_parameters

    meta = {"model_name": config.model, "num_categories": len(annotations.category_names),
            "num_attributes": len(annotations.attribute_names)}
    model = make_model(config, meta["num_categories"], meta["num_attributes"], rt.device, rt.channels_last)
    meta["params"] = count_parameters(model)
    weights, loss_fn = make_loss(config, model, rt)
    return model, meta, weights, loss_fn
