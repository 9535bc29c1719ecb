"""The training loop: ``train(config)``, one ``training_step``, the evaluation loop ``evaluate`` (reference:
docs/training.md; the command line is :mod:`vfu_nb.training.cli`).

Reading order (top to bottom, as the run goes): :func:`train` claims the run directory, then
:func:`~vfu_nb.training.runtime.setup_runtime` (device, distributed, precision, threads, seeds), :func:`build`
(data, model, optimiser, scheduler, resume; from :mod:`vfu_nb.training.builders`), and per epoch
:func:`train_epoch` (steps of :func:`training_step`) and :func:`end_epoch` (evaluate, select / stop early with
:func:`select_best`, checkpoint, log); :func:`finish` writes metrics.json.

* Thesis defaults: Adam, lr 1e-4, batch 8, 10 epochs. **One** optimiser for the whole run (Liu & Lu re-create
  Adam every epoch, which resets its moments); an optional per-epoch LR schedule.
* Every epoch evaluates on ``val`` (model selection and early stopping on top-3 category accuracy) and on
  ``test`` (what is reported: the test metrics *at the best val epoch*).
* Exact resume. The data order of epoch e comes from a generator seeded with (seed, e); model, optimiser,
  scheduler, history, RNG states (and, for ``checkpoint_every``, the position inside the epoch) are saved to
  ``checkpoints/last.pt``. A run killed and resumed with ``--resume`` ends with the same metrics as an
  uninterrupted run (bit-identical on CPU). Checkpoints hold only tensors and plain Python
  (``torch.load(path, weights_only=True)`` works) and resume on another device or memory layout.
* Images come from the data layer's uint8 cache and are normalised on the device. Input path (``loader``):
  ``batch`` (default) reads each batch with one gather from the cache (``EpochBatchLoader``, a
  :class:`vfu_nb.data.loader.BatchLoader`: a prefetch thread, no worker processes, augmentation on the device);
  ``items`` is the per-item DataLoader. Without augmentation both give bit-identical runs on the CPU.
  GPU path: bf16 autocast, channels_last, cudnn.benchmark, optional torch.compile / CUDA graphs, fused Adam,
  pinned memory, non_blocking copies, no host round trip in a step except the loss read-back every
  ``sync_every``.
* DDP under torchrun (env:// when WORLD_SIZE > 1; nccl on CUDA, gloo on CPU). Every rank draws the same
  seeded permutation; global batch b is ``perm[b*B*W:(b+1)*B*W]`` and rank r takes ``[r::W]`` of it, so a
  W-process run sees exactly the batches of a 1-process run with batch B*W. Loss denominators are all-reduced
  (see :func:`vfu_nb.losses.multitask_loss`), so gradients equal those of the global batch. Evaluation runs on
  rank 0 over the full split; only rank 0 writes files.
* A NaN or infinite loss stops the run with :class:`NonFiniteLossError` naming epoch, batch and loss term.
* A full disk stops the run with one line (:class:`vfu_nb.diskspace.DiskFullError`): the file that could not be
  written, the free bytes, the last good checkpoint with its epoch, and ``--resume``; no ``.tmp`` is left behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from vfu_nb.conventions import ATTRIBUTE_TYPES, LOSS_TERMS
from vfu_nb.diskspace import DiskFullError
from vfu_nb.losses import LossWeights, multitask_loss
from vfu_nb.metrics import EvalAccumulator, jsonable
from vfu_nb.training.builders import (
    EpochBatchLoader, EpochBatchSampler, build_datasets, build_model_and_loss, make_loaders, make_scheduler,
)
from vfu_nb.training.config import ConfigError, TrainConfig
from vfu_nb.training.rundir import RunDir, RunLog, load_checkpoint
from vfu_nb.training.runtime import (
    Runtime, derive_seed, dist_info, get_rng_state, prepare_images, process_settings, set_rng_state, setup_runtime,
    to_device,
)

CHECKPOINT_FORMAT = 2   # 2: adds the position inside an epoch ("batch", "epoch_stats"); format 1 still loads


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; ``epoch`` and ``batch`` are 1-based."""

    def __init__(self, epoch: int, batch: int, term: str, value: float):
        self.epoch, self.batch, self.term, self.value = epoch, batch, term, value
        super().__init__(f"non-finite {term} loss ({value}) at epoch {epoch}, batch {batch}")


# ----------------------------------------------------------------------------------------------------------
# Steps and evaluation


def training_step(model, optimizer, batch: dict, loss_fn: Callable, rt: Runtime, cuda_graphs: bool = False,
                  before_update: Optional[Callable] = None) -> torch.Tensor:
    """One optimiser step on a batch already on the device; returns the logged loss terms.

    The result is the 4 terms of :data:`LOSS_TERMS` (detached fp32, averaged over ranks), still on the device:
    nothing here waits for the device. ``before_update(logged)`` runs between the loss and the update (the
    trainer's finite check when it reads every step back).
    """
    if cuda_graphs:
        torch.compiler.cudagraph_mark_step_begin()
    images = prepare_images(batch["image"], rt.channels_last)
    with torch.autocast(device_type=rt.device.type, dtype=torch.bfloat16, enabled=rt.bf16):
        outputs = model(images)
    losses = loss_fn(outputs, batch)
    logged = rt.all_mean(torch.stack([losses[t].detach() for t in LOSS_TERMS]).float())
    if before_update is not None:
        before_update(logged)
    optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    optimizer.step()
    return logged


@contextlib.contextmanager
def inference(model: torch.nn.Module):
    """``model`` in eval mode without gradients for the block; its previous mode comes back afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def forward_batches(model: torch.nn.Module, loader, device, *, bf16: bool = False, channels_last: bool = False,
                    progress: bool = False, desc: str = "eval"):
    """Yield ``(batch, outputs)`` for every batch of ``loader``: the model's outputs without gradients, in eval mode.

    The one evaluation loop (:func:`evaluate` accumulates metrics from it, :func:`vfu_nb.training.runs.predict`
    keeps the outputs): only the images go to ``device``, in the model's memory layout (``channels_last``),
    normalised there, under bf16 autocast with ``bf16``. The model goes back into its previous mode afterwards.
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        images = prepare_images(batch["image"].to(device, non_blocking=True), channels_last)
        with inference(model), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(images)
        yield batch, out


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device, attribute_types=None, *, bf16: bool = False,
             channels_last: bool = False, loss_weights: Optional[LossWeights] = None,
             heatmap_sigma: Optional[float] = None, progress: bool = False, desc: str = "eval") -> dict:
    """Run ``model`` over ``loader`` (:func:`forward_batches`) and return a flat dict of floats (see
    :class:`EvalAccumulator`).

    The accumulator gets the device outputs and the host labels; the loss sums stay on the device until the end of
    the split. Also returns the mean loss terms (``loss_category`` ... ``loss_total``, batch-size weighted) when
    ``loss_weights`` is given. ``attribute_types`` defaults to ``loader.dataset.annotations.attribute_types``.
    """
    from vfu_nb.models import decode_landmarks

    if attribute_types is None:
        attribute_types = loader.dataset.annotations.attribute_types
    device = torch.device(device)
    acc = EvalAccumulator(attribute_types, num_landmarks=getattr(model, "num_landmarks", 8))
    loss_sums = torch.zeros(4, dtype=torch.float64, device=device)
    n_seen = 0
    for batch, out in forward_batches(model, loader, device, bf16=bf16, channels_last=channels_last,
                                      progress=progress, desc=desc):
        heat = out.get("landmark_heatmaps")
        acc.update(category_logits=out["category_logits"], category=batch["category"],
                   attribute_logits=out["attribute_logits"], attributes=batch["attributes"],
                   attributes_known=batch.get("attributes_known"),
                   landmarks_pred=decode_landmarks(heat) if heat is not None else None,
                   landmarks=batch["landmarks"] if heat is not None else None,
                   landmark_visibility=batch["landmark_visibility"] if heat is not None else None)
        if loss_weights is not None:
            b = int(batch["category"].shape[0])
            labels = {**to_device({k: v for k, v in batch.items() if k != "image"}, device), "image": batch["image"]}
            losses = multitask_loss(out, labels, loss_weights, heatmap_sigma)
            loss_sums += torch.stack([losses[t].detach().float() for t in LOSS_TERMS]).double() * b
            n_seen += b
    result = acc.compute()
    if loss_weights is not None and n_seen:
        for t, v in zip(LOSS_TERMS, (loss_sums / n_seen).tolist()):
            result[f"loss_{t}"] = v
    return result


def early_stop(bad_epochs: int, epoch: int, patience: Optional[int], min_epochs: int = 0) -> bool:
    """Whether early stopping ends the run after ``epoch``: ``patience`` epochs without improvement, and not
    before ``min_epochs``."""
    return patience is not None and bad_epochs >= patience and epoch >= min_epochs


def select_best(best: dict, epoch: int, score: float, patience: Optional[int], min_epochs: int = 0) -> dict:
    """The model-selection state after an epoch whose val metric is ``score`` (a new dict; ``best`` unchanged).

    A strictly higher score than the best so far makes ``epoch`` the best one (ties keep the earlier epoch; nan
    never improves); otherwise it is one more bad epoch. ``stopped`` once ``bad_epochs`` reaches ``patience``
    and ``epoch`` reaches ``min_epochs``.
    """
    new = dict(best)
    if not math.isnan(score) and score > best["score"]:
        new.update(epoch=epoch, score=float(score), bad_epochs=0)
    else:
        new["bad_epochs"] = best["bad_epochs"] + 1
    new["stopped"] = early_stop(new["bad_epochs"], epoch, patience, min_epochs)
    return new


def fit_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """After ``load_state_dict``: make the loaded state fit the current parameters and device.

    Each state tensor gets its parameter's device and memory layout (channels_last or contiguous), and the
    ``fused`` / ``foreach`` / ``capturable`` choices of the checkpoint's device are replaced by the current
    optimiser's (fused Adam reads mismatched layouts wrongly). Adam's ``step`` counter goes where the
    implementation wants it (on the parameter's device for fused, on the CPU otherwise).
    """
    for group in optimizer.param_groups:
        for key in ("fused", "foreach", "capturable"):
            if key in optimizer.defaults:
                group[key] = optimizer.defaults[key]
        on_device = bool(group.get("fused") or group.get("capturable"))
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, value in list(state.items()):
                if not isinstance(value, torch.Tensor):
                    continue
                if key == "step":
                    state[key] = value.to(device=p.device if on_device else "cpu", dtype=torch.float32)
                elif value.shape == p.shape:
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)
                else:
                    state[key] = value.to(p.device)


# ----------------------------------------------------------------------------------------------------------
# Build: data, model, optimiser, scheduler, resume


@dataclass
class EpochStats:
    """Running totals of the current epoch (saved with a step checkpoint, so a resumed epoch continues them)."""

    lr: float
    sums: torch.Tensor = field(default_factory=lambda: torch.zeros(4, dtype=torch.float64))
    batches: int = 0          # steps done and read back
    images: int = 0           # over all ranks
    seconds: float = 0.0      # training time so far


@dataclass
class TrainState:
    """Everything the epoch functions share (made by :func:`build`)."""

    config: TrainConfig
    rt: Runtime
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Optional[object]
    loss_weights: LossWeights          # the config's, landmark 0 for models without landmark supervision
    loss_fn: Callable                  # multitask_loss with those weights, sigma, pos_weight, DDP counts
    attribute_types: np.ndarray
    meta: dict                         # model name, class / attribute counts, parameter count
    train_model: Optional[torch.nn.Module] = None    # DDP and/or compiled wrapper of ``model``
    sampler: Optional[EpochBatchSampler] = None
    loader_gen: Optional[torch.Generator] = None
    train_loader: Optional[DataLoader | EpochBatchLoader] = None
    eval_loaders: dict = field(default_factory=dict)
    log: Optional[RunLog] = None
    history: dict = field(default_factory=lambda: {"batches": {k: [] for k in ("epoch", "batch", "step", *LOSS_TERMS)},
                                                   "epochs": []})
    best: dict = field(default_factory=lambda: {"epoch": None, "score": -math.inf, "val": None, "test": None,
                                                "bad_epochs": 0, "stopped": False})
    epoch: int = 0                     # completed epochs
    step: int = 0                      # optimiser steps so far
    resumed_epoch: Optional[EpochStats] = None    # a partly done epoch from a step checkpoint
    last_checkpoint_step: int = 0
    started: float = field(default_factory=time.perf_counter)

    @property
    def run_dir(self) -> RunDir:
        return RunDir(self.config.run_dir)


def _resume(s: TrainState, ck: dict) -> Optional[dict]:
    """Load a ``last.pt`` payload into the fresh state; returns this rank's RNG states to restore."""
    s.model.load_state_dict(ck["model"])
    s.optimizer.load_state_dict(ck["optimizer"])
    fit_optimizer_state(s.optimizer)
    if s.scheduler is not None and ck.get("scheduler") is not None:
        s.scheduler.load_state_dict(ck["scheduler"])
    s.history, s.best = ck["history"], ck["best"]
    s.epoch, s.step = int(ck["epoch"]), int(ck["global_step"])
    s.best["stopped"] = early_stop(s.best["bad_epochs"], s.epoch, s.config.patience, s.config.min_epochs)
    s.last_checkpoint_step = s.step
    if ck.get("batch"):
        s.resumed_epoch = EpochStats(**ck["epoch_stats"])
    rngs = ck["rng"]
    return rngs[s.rt.rank] if isinstance(rngs, list) and s.rt.rank < len(rngs) else None


def build(config: TrainConfig, rt: Runtime) -> TrainState:
    """Data sets and loaders, model, optimiser, scheduler, loss; the state of ``last.pt`` when resuming."""
    sets = build_datasets(config, rt)
    ann = sets["val"].annotations
    model, meta, weights, loss_fn = build_model_and_loss(config, rt, ann)
    # one optimiser for the whole run (Liu & Lu re-create Adam every epoch, resetting its moments)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                 **({"fused": True} if rt.fused_adam else {}))
    s = TrainState(config, rt, model, optimizer, make_scheduler(config, optimizer), weights, loss_fn,
                   np.asarray(ann.attribute_types), meta)

    rng_to_restore = None
    resuming = config.resume and s.run_dir.checkpoint("last").exists()
    if resuming:
        rng_to_restore = _resume(s, load_checkpoint(s.run_dir.checkpoint("last")))
    elif rt.distributed:
        # different augmentation streams per rank (model init above used the common seed)
        torch.manual_seed(derive_seed(config.seed, rt.rank, 1))

    s.train_model = model
    if rt.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        s.train_model = DDP(model, device_ids=[rt.device.index] if rt.is_cuda else None)
    if config.compile or config.cuda_graphs:
        s.train_model = torch.compile(s.train_model, **({"mode": "reduce-overhead"} if config.cuda_graphs else {}))
    s.sampler, s.loader_gen, s.train_loader, s.eval_loaders = make_loaders(config, rt, sets)
    if rng_to_restore is not None:
        set_rng_state(rng_to_restore)

    s.log = RunLog(config.run_dir, active=rt.is_main, show=config.progress and rt.is_main,
                   log_every=config.log_every, tensorboard=config.tensorboard, history=s.history, step=s.step)
    if rt.is_main:
        s.run_dir.write_config(config, rt.resolved())
        _log_setup(s, sets, resuming)
    return s


def _non_defaults(config: TrainConfig) -> str:
    default = TrainConfig().to_dict()
    return ", ".join(f"{k} {v}" for k, v in config.to_dict().items() if v != default[k]) or "none"


def _log_setup(s: TrainState, sets: dict, resumed: bool) -> None:
    c, rt = s.config, s.rt
    if resumed:
        where = f"after epoch {s.epoch}" + (f", step {s.step}" if s.resumed_epoch else "")
        s.log.info(f"resuming {s.run_dir} {where}")
    precision = "bf16 autocast" if rt.bf16 else ("fp32 (TF32 on)" if rt.tf32 else "fp32")
    s.log.info("\n".join([
        f"== {'resume' if resumed else 'start'} {s.run_dir}, settings other than the defaults: {_non_defaults(c)}",
        f"model {c.model} ({s.meta['params'] / 1e6:.2f} M params), {c.image_size} px, width {c.width}",
        f"data {c.data_root}: {len(sets['train'])} train (fraction {c.train_fraction}) / {len(sets['val'])} val / "
        f"{len(sets['test'])} test images",
        f"device {rt.device} x{rt.world}, threads {rt.threads}, precision {precision}, channels_last "
        f"{rt.channels_last}, deterministic {rt.deterministic}, compile {c.compile or c.cuda_graphs}"
        f"{' (CUDA graphs)' if c.cuda_graphs else ''}",
        f"data path {_data_path(c, rt)}",
        f"batch {c.batch_size} x {rt.world}, eval batch {rt.eval_batch_size}, sync_every {rt.sync_every}, "
        f"checkpoint_every {c.checkpoint_every}",
    ]), echo=False)


def _data_path(c: TrainConfig, rt: Runtime) -> str:
    """The input path in words, for train.log."""
    pinned = f"pin_memory {rt.is_cuda}"
    if c.loader == "batch":
        augment = f", augmentation on {rt.device.type}" if c.augment else ""
        ignored = f" (--num-workers {c.num_workers} does not apply)" if c.num_workers else ""
        return (f"batch loader (one gather per batch from the uint8 cache, 1 prefetch thread, 0 worker processes"
                f"{ignored}, {pinned}{augment})")
    augment = ", augmentation per item" if c.augment else ""
    return f"per-item DataLoader ({rt.num_workers} worker processes, {pinned}{augment})"


# ----------------------------------------------------------------------------------------------------------
# One training epoch


def save_state(s: TrainState, stats: Optional[EpochStats] = None) -> dict:
    """Write ``checkpoints/last.pt`` (all ranks take part: RNG states are gathered); returns the payload.

    ``stats`` is given for a step checkpoint inside an epoch (``s.epoch`` epochs done, ``stats.batches`` steps
    of the next one); at an epoch end it is None.
    """
    rngs = s.rt.gather(get_rng_state())
    payload = {"format": CHECKPOINT_FORMAT, "model": s.model.state_dict(), "optimizer": s.optimizer.state_dict(),
               "scheduler": s.scheduler.state_dict() if s.scheduler is not None else None,
               "epoch": s.epoch, "global_step": s.step, "batch": stats.batches if stats else 0,
               "epoch_stats": dataclasses.asdict(stats) if stats else None,
               "history": s.history, "best": s.best, "rng": rngs, "config": jsonable(s.config.to_dict()), **s.meta}
    if s.rt.is_main:
        s.run_dir.save_checkpoint(payload, "last")
    s.last_checkpoint_step = s.step
    return payload


def train_epoch(s: TrainState, on_step: Optional[Callable] = None) -> EpochStats:
    """Train epoch ``s.epoch + 1`` (from its step checkpoint when resuming inside it)."""
    from tqdm.auto import tqdm

    config, rt = s.config, s.rt
    e1 = s.epoch + 1
    stats = s.resumed_epoch or EpochStats(lr=s.optimizer.param_groups[0]["lr"])
    s.resumed_epoch = None
    s.sampler.set_epoch(s.epoch, start_batch=stats.batches)
    s.loader_gen.manual_seed(derive_seed(config.seed, s.epoch, 2, rt.rank))   # augmentation: one stream per rank
    s.train_model.train()
    t0 = time.perf_counter() - stats.seconds
    bar = tqdm(s.train_loader, desc=f"epoch {e1}", leave=False, disable=not (config.progress and rt.is_main),
               unit="batch")
    pending: list = []

    def read_back() -> None:
        """Copy the pending losses to the host (the deliberate sync), check them, log them."""
        if not pending:
            return
        vals = torch.stack(pending).double().cpu()
        first = stats.batches + 1
        bad = ~torch.isfinite(vals)
        if bad.any():
            i, j = (int(v) for v in bad.nonzero()[0])
            raise NonFiniteLossError(e1, first + i, LOSS_TERMS[j], float(vals[i, j]))
        rows = [(e1, first + i, s.step - len(vals) + i + 1, *row) for i, row in enumerate(vals.tolist())]
        for row in rows:
            for key, v in zip(("epoch", "batch", "step", *LOSS_TERMS), row):
                s.history["batches"][key].append(v)
        s.log.batches(rows)
        stats.sums += vals.sum(0)
        stats.batches += len(vals)
        pending.clear()
        bar.set_postfix(loss=f"{rows[-1][-1]:.4f}", refresh=False)

    def check_finite(logged: torch.Tensor, b: int) -> None:
        if not bool(torch.isfinite(logged).all()):
            i = int((~torch.isfinite(logged)).nonzero()[0])
            raise NonFiniteLossError(e1, b, LOSS_TERMS[i], float(logged[i]))

    n_batches = len(s.sampler) + stats.batches
    for b, batch in enumerate(bar, start=stats.batches + 1):
        batch = to_device(batch, rt.device)
        # reading every step back (CPU default): stop before a non-finite loss updates the weights
        guard = functools.partial(check_finite, b=b) if rt.sync_every == 1 else None
        pending.append(training_step(s.train_model, s.optimizer, batch, s.loss_fn, rt,
                                     cuda_graphs=config.cuda_graphs, before_update=guard))
        s.step += 1
        stats.images += int(batch["category"].shape[0]) * rt.world
        if len(pending) >= rt.sync_every:
            read_back()
            if config.checkpoint_every and s.step - s.last_checkpoint_step >= config.checkpoint_every \
                    and b < n_batches:   # the epoch end saves anyway
                stats.seconds = time.perf_counter() - t0
                save_state(s, stats)
                s.log.flush()
        if on_step is not None:
            on_step(e1, b, s.step)
    read_back()
    bar.close()
    if rt.is_cuda:
        torch.cuda.synchronize(rt.device)
    stats.seconds = time.perf_counter() - t0
    return stats


# ----------------------------------------------------------------------------------------------------------
# End of epoch: evaluate, select, checkpoint, log


def end_epoch(s: TrainState, stats: EpochStats) -> None:
    """Step the schedule, evaluate (rank 0), update selection / early stopping, checkpoint, log."""
    config, rt = s.config, s.rt
    s.epoch += 1
    if s.scheduler is not None:
        s.scheduler.step()
    rec = None
    if rt.is_main:
        t_eval = time.perf_counter()
        n = stats.batches
        train_means = {t: (float(v) if n else float("nan"))
                       for t, v in zip(LOSS_TERMS, (stats.sums / max(1, n)).tolist())}
        results = {split: evaluate(s.model, loader, rt.device, s.attribute_types, bf16=rt.bf16,
                                   channels_last=rt.channels_last, loss_weights=s.loss_weights,
                                   heatmap_sigma=rt.heatmap_sigma, progress=config.progress, desc=f"{split} {s.epoch}")
                   for split, loader in s.eval_loaders.items()}
        if config.select_metric not in results["val"]:
            raise ConfigError(f"--select-metric {config.select_metric!r} is not a metric; choose one of "
                              f"{', '.join(sorted(results['val']))}")
        eval_seconds = time.perf_counter() - t_eval
        rec = {"epoch": s.epoch, "lr": stats.lr, "train": train_means, "val": results["val"], "test": results["test"],
               "train_images": stats.images, "train_seconds": stats.seconds, "eval_seconds": eval_seconds,
               "seconds": stats.seconds + eval_seconds,
               "images_per_s": stats.images / stats.seconds if stats.seconds > 0 else float("nan")}
        s.history["epochs"].append(jsonable(rec))
        best = select_best(s.best, s.epoch, results["val"][config.select_metric], config.patience, config.min_epochs)
        if best["epoch"] == s.epoch:
            best.update(val=jsonable(results["val"]), test=jsonable(results["test"]))
        s.best = best
    s.best, s.history["epochs"] = rt.share([s.best, s.history["epochs"]])
    payload = save_state(s)
    if rt.is_main:
        if s.best["epoch"] == s.epoch:
            s.run_dir.save_checkpoint(payload, "best")
        s.run_dir.write_history(s.history)
        s.log.epoch(s.history["epochs"], s.step)
        s.log.info(_summary_line(s.epoch, config.epochs, rec))
    rt.barrier()


def _summary_line(epoch: int, epochs: int, rec: dict) -> str:
    tr, va, te = rec["train"], rec["val"], rec["test"]

    def f(d, k, fmt=".4f"):
        v = d.get(k)
        return "  nan " if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    return (f"epoch {epoch}/{epochs} loss {f(tr, 'total')} (cat {f(tr, 'category')} attr {f(tr, 'attribute')} "
            f"lm {f(tr, 'landmark', '.5f')}) | val top3 {f(va, 'category_top3')} attr3 "
            f"{f(va, 'attr_top3_all_grouped')} NE {f(va, 'landmark_ne_mean')} | test top3 "
            f"{f(te, 'category_top3')} attr3 {f(te, 'attr_top3_all_grouped')} NE {f(te, 'landmark_ne_mean')} | "
            f"{rec['seconds']:.1f}s {rec['images_per_s']:.1f} img/s")


def finish(s: TrainState) -> dict:
    """metrics.json: the best val epoch with its val and test metrics, parameter count and timings."""
    epochs = s.history["epochs"]
    ips = [e["images_per_s"] for e in epochs if e.get("images_per_s")]
    metrics = {
        "model": s.config.model, "params": s.meta["params"], "seed": s.config.seed,
        "select_metric": s.config.select_metric, "best_epoch": s.best["epoch"], "epochs_run": len(epochs),
        "early_stopped": bool(s.best["stopped"]), "val": s.best["val"], "test": s.best["test"],
        "timing": {"wall_seconds": time.perf_counter() - s.started,
                   "train_seconds": sum(e["train_seconds"] for e in epochs),
                   "mean_images_per_s": float(np.mean(ips)) if ips else None,
                   "device": str(s.rt.device), "world_size": s.rt.world},
    }
    if s.rt.is_main:
        s.run_dir.write_metrics(metrics)
        s.log.info(format_metrics(jsonable(metrics)), echo=False)   # the CLI prints it
    s.rt.barrier()
    return jsonable(metrics)


# ----------------------------------------------------------------------------------------------------------
# The run


def train(config: TrainConfig | dict, on_step: Optional[Callable[[int, int, int], None]] = None) -> dict:
    """Train one model; returns the content of ``metrics.json`` (on every rank).

    Run directory (see :mod:`vfu_nb.training.rundir`): ``config.json``, ``history.json``, ``metrics.json``,
    ``metrics.csv``, ``batches.csv``, ``train.log``, optional ``tensorboard/``, ``checkpoints/{last,best}.pt``.
    A folder that holds a run is refused unless ``config.resume`` is set, a resume with changed settings is
    refused (:data:`RESUME_SAFE_FIELDS` may change), and a second process writing the same run is refused.

    ``on_step(epoch, batch, step)`` (1-based) is called after every optimiser step (and its checkpoint).
    The process-wide torch settings (deterministic algorithms, threads, TF32, cudnn) are restored on return.
    """
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    world, rank, local_rank = dist_info()
    run_dir = RunDir(config.run_dir)
    try:
        with contextlib.ExitStack() as stack:
            if rank == 0:
                stack.enter_context(run_dir.lock())
            run_dir.check_claim(config)            # every rank, before any rank can write (init below is a rendezvous)
            stack.enter_context(process_settings())
            rt = setup_runtime(config, world, rank, local_rank)
            s = build(config, rt)
            stack.push(s.log.close_after)
            while s.epoch < config.epochs and not s.best["stopped"]:
                stats = train_epoch(s, on_step)
                end_epoch(s, stats)
            return finish(s)
    except DiskFullError as exc:           # the file, the free bytes, the last good checkpoint and --resume
        raise exc.with_way_out(run_dir.resume_advice()) from None


def format_metrics(metrics: dict) -> str:
    """A short human-readable summary of a metrics.json dict."""
    lines = [f"model {metrics['model']} ({metrics['params'] / 1e6:.2f} M params), best val epoch "
             f"{metrics['best_epoch']} of {metrics['epochs_run']}" + (" (early stop)" if metrics.get("early_stopped")
                                                                        else "")]
    for split in ("val", "test"):
        m = metrics.get(split) or {}

        def g(k):
            v = m.get(k)
            return "nan" if v is None else f"{v:.4f}"

        lines.append(f"  {split:4s} category top1/3/5 {g('category_top1')} / {g('category_top3')} / "
                     f"{g('category_top5')}")
        lines.append("       attr top3 " + " ".join(f"{t} {g('attr_top3_' + t)}" for t in
                                                    (*ATTRIBUTE_TYPES, "all_grouped", "all_strict")))
        lines.append(f"       attr mAP {g('attr_map_all')}")
        lines.append(f"       landmark NE mean {g('landmark_ne_mean')}")
    t = metrics.get("timing") or {}
    if t:
        ips = t.get("mean_images_per_s")
        lines.append(f"  wall {t.get('wall_seconds', 0):.1f}s, train {ips if ips is None else round(ips, 1)} img/s "
                     f"on {t.get('device')} x{t.get('world_size')}")
    return "\n".join(lines)
