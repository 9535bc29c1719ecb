"""Training loop: ``TrainConfig``, ``train(config)``, ``evaluate(...)`` and the CLI.

    python -m vfu_nb.train --model mtl --data-root DIR --run-dir runs/x [--epochs 10 --batch-size 8 ...]
    torchrun --nproc_per_node 8 -m vfu_nb.train ...        # DistributedDataParallel, batch size per process

Design (see ecosystem.md 7.3-7.4 and performance.md 6):

* Thesis defaults: Adam, lr 1e-4, batch 8, 10 epochs. **One** optimiser for the whole run (Liu & Lu re-create
  Adam every epoch, which resets its moments); an optional per-epoch LR schedule.
* Every epoch evaluates on ``val`` (model selection and early stopping on top-3 category accuracy) and on
  ``test`` (what is reported: the test metrics *at the best val epoch*).
* Exact resume. The data order of epoch e comes from a generator seeded with (seed, e); model, optimiser,
  scheduler, history and all RNG states are saved at the end of every epoch (``checkpoints/last.pt``, written
  to a temp file and ``os.replace``d). A run killed mid-epoch and resumed with ``--resume`` redoes that epoch
  and ends with the same metrics as an uninterrupted run (bit-identical on CPU).
* Checkpoints hold only tensors and plain Python, so ``torch.load(path, weights_only=True)`` works.
* Images come from the data layer's uint8 cache and are normalised on the device (CPU and GPU alike).
  GPU path: bf16 autocast, channels_last, cudnn.benchmark, optional torch.compile, pinned memory, persistent
  workers, non_blocking copies, and loss values read back only every ``sync_every`` steps.
* DDP under torchrun (env:// when WORLD_SIZE > 1; nccl on CUDA, gloo on CPU). Every rank draws the same
  seeded permutation; global batch b is ``perm[b*B*W:(b+1)*B*W]`` and rank r takes ``[r::W]`` of it, so a
  W-process run sees exactly the batches of a 1-process run with batch B*W. Loss denominators are all-reduced
  (see :func:`vfu_nb.losses.multitask_loss`), so gradients equal those of the global batch. Evaluation runs on
  rank 0 over the full split; only rank 0 writes files.
* A NaN or infinite loss stops the run with :class:`NonFiniteLossError` naming epoch, batch and loss term.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler

from vfu_nb.losses import LossWeights, default_heatmap_sigma, multitask_loss
from vfu_nb.metrics import EvalAccumulator, jsonable

LOSS_TERMS = ("category", "attribute", "landmark", "total")
LR_SCHEDULES = ("none", "cosine", "step", "exp")
KILL_ENV = "VFU_NB_TEST_KILL_AT"   # "epoch:batch" (1-based): SIGKILL self after that optimizer step (tests)
CHECKPOINT_FORMAT = 1


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; ``epoch`` and ``batch`` are 1-based."""

    def __init__(self, epoch: int, batch: int, term: str, value: float):
        self.epoch, self.batch, self.term, self.value = epoch, batch, term, value
        super().__init__(f"non-finite {term} loss ({value}) at epoch {epoch}, batch {batch}")


@dataclass
class TrainConfig:
    """Everything a run needs; saved as ``config.json`` in the run directory.

    Defaults follow the thesis (Adam, batch 8, 10 epochs, lr 1e-4, 224 px, full-width VGG-16).
    ``None`` means "pick per device": ``bf16``/``channels_last`` on for CUDA, ``num_workers`` 0 on CPU,
    ``deterministic`` on for CPU, ``heatmap_sigma`` = 5 px at 224 scaled with ``image_size``, at least 4 px (vfu_nb.losses.default_heatmap_sigma).
    """

    model: str = "mtl"
    data_root: str = "data/deepfashion"
    run_dir: str = "runs/mtl"
    epochs: int = 10
    batch_size: int = 8                    # per process; global batch = batch_size * world size
    eval_batch_size: Optional[int] = None  # default 4 * batch_size
    lr: float = 1e-4
    weight_decay: float = 0.0
    lr_schedule: str = "none"              # none | cosine | step | exp (stepped once per epoch)
    lr_step_size: int = 3                  # step: decay every N epochs
    lr_gamma: float = 0.1                  # step / exp factor (Liu & Lu: exp 0.8)
    image_size: int = 224
    width: float = 1.0
    backbone: str = "vgg16"
    pretrained: Optional[str] = None       # path to torchvision VGG-16 weights, or "torchvision"
    device: str = "auto"
    seed: int = 0
    data_seed: int = 0                     # seed of the max_items subsets (same subset for every run seed)
    resume: bool = False
    compile: bool = False
    bf16: Optional[bool] = None
    channels_last: Optional[bool] = None
    deterministic: Optional[bool] = None
    max_items: Optional[int] = None        # per split: first N after a seeded permutation (smoke runs)
    max_batches: Optional[int] = None      # per training epoch (smoke runs)
    patience: Optional[int] = None         # early stopping: epochs without val improvement
    select_metric: str = "category_top3"   # val metric for model selection (higher is better)
    num_workers: Optional[int] = None
    augment: bool = False                  # flip + scale/shift jitter (vfu_nb.data), train split only
    pad_to_square: bool = False
    cache_dir: Optional[str] = None
    loss_weights: LossWeights = field(default_factory=LossWeights)
    heatmap_sigma: Optional[float] = None  # pixels at input resolution
    attr_pos_weight: Optional[float] = None
    sync_every: Optional[int] = None       # read losses back every N steps (1 on CPU, 25 on CUDA)
    threads: Optional[int] = None          # torch.set_num_threads (CPU); None = torch's default
    progress: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        lw = d.get("loss_weights")
        if isinstance(lw, dict):
            d["loss_weights"] = LossWeights(**lw)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------------------
# Reproducibility helpers


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (e.g. (seed, epoch, stream)); independent streams for different tuples."""
    state = np.random.SeedSequence([int(p) % (2**63) for p in parts]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def seed_everything(seed: int, deterministic: bool = False) -> torch.Generator:
    """Seed python, numpy and torch (all devices); optionally request deterministic algorithms.

    Returns a ``torch.Generator`` seeded with ``seed`` for a DataLoader (use with :func:`seed_worker`).
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy and random from the worker's torch seed."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def get_rng_state() -> dict:
    """All RNG states as tensors / plain Python (safe for ``torch.load(weights_only=True)``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    py = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [str(name), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                  float(cached)],
        "python": [int(py[0]), [int(x) for x in py[1]], py[2]],
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys.numpy(), dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class EpochBatchSampler(Sampler):
    """Yields this rank's share of each global batch of a seeded per-epoch permutation.

    Epoch e permutes ``range(n)`` with a generator seeded by ``derive_seed(seed, e, 0)`` (or keeps the order
    with ``shuffle=False``). Global batches have ``batch_size * world_size`` items; rank r gets items
    ``r::world_size`` of each. With ``world_size > 1`` an incomplete last global batch is dropped so every
    rank runs the same number of equal steps.
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: Optional[bool] = None, max_batches: Optional[int] = None):
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.drop_last = world_size > 1 if drop_last is None else drop_last
        self.max_batches = max_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self) -> list:
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
            yield batch[self.rank::self.world_size]

    def __len__(self) -> int:
        gb = self.batch_size * self.world_size
        n = self.n // gb if self.drop_last else math.ceil(self.n / gb)
        return n if self.max_batches is None else min(n, self.max_batches)


# ----------------------------------------------------------------------------------------------------------
# Small helpers


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path, obj, indent: Optional[int] = 1) -> None:
    """Strict JSON (nan/inf -> null), written atomically (temp file + os.replace)."""
    text = json.dumps(jsonable(obj), indent=indent, separators=None if indent else (",", ":"))
    _atomic_write_bytes(Path(path), (text + "\n").encode())


def save_checkpoint(path, payload: dict) -> None:
    """``torch.save`` to ``path.tmp``, then ``os.replace`` (never a half-written checkpoint)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def _maybe_kill(epoch: int, batch: int) -> None:
    spec = os.environ.get(KILL_ENV)
    if spec and spec == f"{epoch}:{batch}":
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def _prepare_images(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    from vfu_nb.data import normalize_images

    x = normalize_images(images) if images.dtype == torch.uint8 else images.float()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


# ----------------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device, attribute_types=None, *, bf16: bool = False,
             channels_last: bool = False, loss_weights: Optional[LossWeights] = None,
             heatmap_sigma: Optional[float] = None, progress: bool = False, desc: str = "eval") -> dict:
    """Run ``model`` over ``loader`` and return a flat dict of floats (see :class:`EvalAccumulator`).

    Also returns the mean loss terms (``loss_category`` ... ``loss_total``, batch-size weighted) when
    ``loss_weights`` is given. ``attribute_types`` defaults to ``loader.dataset.annotations.attribute_types``.
    The model is put in eval mode and back into its previous mode afterwards.
    """
    from tqdm.auto import tqdm

    from vfu_nb.models import decode_landmarks

    if attribute_types is None:
        attribute_types = loader.dataset.annotations.attribute_types
    device = torch.device(device)
    was_training = model.training
    model.eval()
    acc = EvalAccumulator(attribute_types, num_landmarks=getattr(model, "num_landmarks", 8))
    loss_sums = torch.zeros(4, dtype=torch.float64)
    n_seen = 0
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        batch = _to_device(batch, device)
        images = _prepare_images(batch["image"], channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(images)
        heat = out.get("landmark_heatmaps")
        lm_pred = decode_landmarks(heat) if heat is not None else None
        acc.update(out["category_logits"], batch["category"], out["attribute_logits"], batch["attributes"],
                   lm_pred, batch["landmarks"] if heat is not None else None,
                   batch["landmark_visibility"] if heat is not None else None)
        if loss_weights is not None:
            b = int(batch["category"].shape[0])
            losses = multitask_loss(out, batch, loss_weights, heatmap_sigma)
            loss_sums += torch.stack([losses[t].detach().float() for t in LOSS_TERMS]).double().cpu() * b
            n_seen += b
    model.train(was_training)
    result = acc.compute()
    if loss_weights is not None and n_seen:
        for t, v in zip(LOSS_TERMS, (loss_sums / n_seen).tolist()):
            result[f"loss_{t}"] = v
    return result


# ----------------------------------------------------------------------------------------------------------
# Training


def _make_scheduler(config: TrainConfig, optimizer):
    s = config.lr_schedule
    if s == "none":
        return None
    if s == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs))
    if s == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step_size, gamma=config.lr_gamma)
    if s == "exp":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_gamma)
    raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {s!r}")


def _build_datasets(config: TrainConfig, rank: int, world: int):
    from vfu_nb.data import DeepFashionC

    def make(split):
        return DeepFashionC(config.data_root, split, config.image_size, augment=config.augment and split == "train",
                            cache=True, uint8=True, cache_dir=config.cache_dir, pad_to_square=config.pad_to_square,
                            max_items=config.max_items, subset_seed=config.data_seed,
                            progress=config.progress and rank == 0)

    # rank 0 builds the caches first; the others then open them
    if world > 1 and rank != 0:
        dist.barrier()
    sets = {split: make(split) for split in ("train", "val", "test")}
    if world > 1 and rank == 0:
        dist.barrier()
    return sets


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


def train(config: TrainConfig | dict) -> dict:
    """Train one model; returns the content of ``metrics.json`` (on every rank).

    Run directory: ``config.json``, ``history.json`` (per-batch losses, per-epoch train/val/test metrics and
    timings), ``metrics.json`` (best val epoch, its val and test metrics, model name and parameter count),
    ``checkpoints/last.pt`` and ``checkpoints/best.pt``.

    The process-wide deterministic-algorithms setting and thread count are restored on return (notebooks and
    test sessions keep their own settings).
    """
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    threads = torch.get_num_threads()
    try:
        return _train(config)
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.set_num_threads(threads)


def _train(config: TrainConfig | dict) -> dict:
    from tqdm.auto import tqdm

    from vfu_nb.models import build_model, count_parameters

    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    if config.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {config.lr_schedule!r}")
    t_start = time.perf_counter()
    world, rank, local_rank = _dist_info()
    device = resolve_device(config.device, local_rank)
    distributed = world > 1
    if distributed and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://",
                                timeout=timedelta(hours=2))
    if config.threads:
        torch.set_num_threads(config.threads)
    elif distributed and device.type == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    is_cuda = device.type == "cuda"
    bf16 = is_cuda if config.bf16 is None else bool(config.bf16)
    channels_last = is_cuda if config.channels_last is None else bool(config.channels_last)
    deterministic = (not is_cuda) if config.deterministic is None else bool(config.deterministic)
    sync_every = config.sync_every or (25 if is_cuda else 1)
    num_workers = config.num_workers
    if num_workers is None:
        num_workers = min(8, max(1, (os.cpu_count() or 1) // max(1, world))) if is_cuda else 0
    show = config.progress and rank == 0

    seed_everything(config.seed, deterministic)
    if is_cuda:
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    run_dir = Path(config.run_dir)
    ckpt_dir = run_dir / "checkpoints"
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", config.to_dict())

    sets = _build_datasets(config, rank, world)
    ann = sets["train"].annotations
    num_categories, num_attributes = len(ann.category_names), len(ann.attribute_names)
    attribute_types = np.asarray(ann.attribute_types)

    model = build_model(config.model, num_categories, num_attributes, 8, config.image_size, config.width,
                        config.backbone, config.pretrained).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    n_params = count_parameters(model)
    weights = dataclasses.replace(config.loss_weights)
    if not getattr(model, "has_landmark_branch", True) or not getattr(model, "landmark_supervised", True):
        weights.landmark = 0.0
    sigma = config.heatmap_sigma if config.heatmap_sigma is not None else default_heatmap_sigma(config.image_size)

    # one optimiser for the whole run (Liu & Lu re-create Adam every epoch, resetting its moments)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                 **({"fused": True} if is_cuda else {}))
    scheduler = _make_scheduler(config, optimizer)

    history: dict = {"batches": {k: [] for k in ("epoch", "batch", "step", *LOSS_TERMS)}, "epochs": []}
    best: dict = {"epoch": None, "score": -math.inf, "val": None, "test": None, "bad_epochs": 0, "stopped": False}
    start_epoch, global_step = 0, 0
    rng_to_restore = None
    last_path = ckpt_dir / "last.pt"
    if config.resume and last_path.exists():
        ck = load_checkpoint(last_path)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if scheduler is not None and ck.get("scheduler") is not None:
            scheduler.load_state_dict(ck["scheduler"])
        history, best = ck["history"], ck["best"]
        start_epoch, global_step = int(ck["epoch"]), int(ck["global_step"])
        rngs = ck["rng"]
        rng_to_restore = rngs[rank] if isinstance(rngs, list) and rank < len(rngs) else None
        if rank == 0:
            print(f"resuming {run_dir} after epoch {start_epoch}", flush=True)
    elif distributed:
        # different augmentation streams per rank (model init above used the common seed)
        torch.manual_seed(derive_seed(config.seed, rank, 1))

    train_model: torch.nn.Module = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[device.index] if is_cuda else None)
    if config.compile:
        train_model = torch.compile(train_model)

    sampler = EpochBatchSampler(len(sets["train"]), config.batch_size, shuffle=True, seed=config.seed, rank=rank,
                                world_size=world, max_batches=config.max_batches)
    loader_gen = torch.Generator()
    # Persistent workers keep their RNG across epochs, so with augmentation they would make a resumed run
    # differ; without augmentation the workers draw no random numbers and persistence is free.
    common = dict(num_workers=num_workers, pin_memory=is_cuda, worker_init_fn=seed_worker,
                  persistent_workers=num_workers > 0 and not config.augment)
    if num_workers > 0:
        common["prefetch_factor"] = 4
    train_loader = DataLoader(sets["train"], batch_sampler=sampler, generator=loader_gen, **common)
    eval_bs = config.eval_batch_size or 4 * config.batch_size
    eval_loaders = {}
    if rank == 0:
        for split in ("val", "test"):
            eval_loaders[split] = DataLoader(
                sets[split], batch_sampler=EpochBatchSampler(len(sets[split]), eval_bs, shuffle=False),
                generator=torch.Generator().manual_seed(0), **common)

    def reduce_counts(counts: torch.Tensor) -> torch.Tensor:
        counts = counts.clone()
        dist.all_reduce(counts)
        return counts / world

    if rng_to_restore is not None:
        set_rng_state(rng_to_restore)

    epoch_bar = tqdm(range(start_epoch, config.epochs), desc=f"{config.model}", unit="epoch", disable=not show,
                     initial=start_epoch, total=config.epochs)
    for epoch in epoch_bar:
        if best["stopped"]:
            break
        e1 = epoch + 1
        t_epoch = time.perf_counter()
        sampler.set_epoch(epoch)
        loader_gen.manual_seed(derive_seed(config.seed, epoch, 2))
        train_model.train()
        lr_now = optimizer.param_groups[0]["lr"]
        pending: list = []
        sums = torch.zeros(4, dtype=torch.float64)
        n_batches = 0
        n_images = 0
        batch_bar = tqdm(train_loader, desc=f"epoch {e1}", leave=False, disable=not show, unit="batch")

        def flush(pending, first_batch):
            nonlocal sums, n_batches
            if not pending:
                return
            vals = torch.stack(pending).double().cpu()
            bad = ~torch.isfinite(vals)
            if bad.any():
                i, j = (int(v) for v in bad.nonzero()[0])
                raise NonFiniteLossError(e1, first_batch + i, LOSS_TERMS[j], float(vals[i, j]))
            H = history["batches"]
            for i, row in enumerate(vals.tolist()):
                H["epoch"].append(e1)
                H["batch"].append(first_batch + i)
                H["step"].append(global_step - len(vals) + i + 1)
                for t, v in zip(LOSS_TERMS, row):
                    H[t].append(v)
            sums += vals.sum(0)
            n_batches += len(vals)
            if show:
                batch_bar.set_postfix(loss=f"{vals[-1, 3].item():.4f}", refresh=False)

        first_pending = 1
        for b, batch in enumerate(batch_bar, start=1):
            batch = _to_device(batch, device)
            images = _prepare_images(batch["image"], channels_last)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                outputs = train_model(images)
            losses = multitask_loss(outputs, batch, weights, sigma, config.attr_pos_weight,
                                    reduce_counts if distributed else None)
            logged = torch.stack([losses[t].detach() for t in LOSS_TERMS]).float()
            if distributed:
                dist.all_reduce(logged)
                logged = logged / world
            if sync_every == 1 and not bool(torch.isfinite(logged).all()):
                flush([logged], b)  # raises before the optimiser step
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            optimizer.step()
            global_step += 1
            n_images += int(batch["category"].shape[0]) * world
            pending.append(logged)
            if len(pending) >= sync_every:
                flush(pending, first_pending)
                pending, first_pending = [], b + 1
            _maybe_kill(e1, b)
        flush(pending, first_pending)
        batch_bar.close()
        if is_cuda:
            torch.cuda.synchronize(device)
        train_seconds = time.perf_counter() - t_epoch
        if scheduler is not None:
            scheduler.step()

        rec = None
        if rank == 0:
            t_eval = time.perf_counter()
            train_means = {t: (float(v) if n_batches else float("nan"))
                           for t, v in zip(LOSS_TERMS, (sums / max(1, n_batches)).tolist())}
            results = {split: evaluate(model, loader, device, attribute_types, bf16=bf16,
                                       channels_last=channels_last, loss_weights=weights, heatmap_sigma=sigma,
                                       progress=show, desc=f"{split} {e1}")
                       for split, loader in eval_loaders.items()}
            seconds = time.perf_counter() - t_epoch
            rec = {"epoch": e1, "lr": lr_now, "train": train_means, "val": results["val"], "test": results["test"],
                   "train_images": n_images, "train_seconds": train_seconds,
                   "eval_seconds": time.perf_counter() - t_eval, "seconds": seconds,
                   "images_per_s": n_images / train_seconds if train_seconds > 0 else float("nan")}
            history["epochs"].append(jsonable(rec))
            score = results["val"].get(config.select_metric, float("nan"))
            improved = not math.isnan(score) and score > best["score"]
            if improved:
                best.update(epoch=e1, score=float(score), val=jsonable(results["val"]),
                            test=jsonable(results["test"]), bad_epochs=0)
            else:
                best["bad_epochs"] += 1
            if config.patience is not None and best["bad_epochs"] >= config.patience:
                best["stopped"] = True
        if distributed:
            obj = [best, history["epochs"]]
            dist.broadcast_object_list(obj, src=0)
            best, history["epochs"] = obj
        rngs = [get_rng_state()]
        if distributed:
            gathered = [None] * world
            dist.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if rank == 0:
            payload = {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                       "scheduler": scheduler.state_dict() if scheduler is not None else None,
                       "epoch": e1, "global_step": global_step, "history": history, "best": best,
                       "rng": rngs, "config": jsonable(config.to_dict()), "model_name": config.model,
                       "num_categories": num_categories, "num_attributes": num_attributes}
            save_checkpoint(last_path, payload)
            if best["epoch"] == e1:
                save_checkpoint(ckpt_dir / "best.pt", payload)
            write_json(run_dir / "history.json", history, indent=None)  # compact: per-batch lists
            line = _summary_line(e1, config.epochs, rec)
            if show:
                tqdm.write(line)
            else:
                print(line, flush=True)
        if distributed:
            dist.barrier()
    epoch_bar.close()

    epochs_run = len(history["epochs"])
    ips = [e["images_per_s"] for e in history["epochs"] if e.get("images_per_s")]
    metrics = {
        "model": config.model, "params": n_params, "seed": config.seed, "select_metric": config.select_metric,
        "best_epoch": best["epoch"], "epochs_run": epochs_run, "early_stopped": bool(best["stopped"]),
        "val": best["val"], "test": best["test"],
        "timing": {"wall_seconds": time.perf_counter() - t_start,
                   "train_seconds": sum(e["train_seconds"] for e in history["epochs"]),
                   "mean_images_per_s": float(np.mean(ips)) if ips else None,
                   "device": str(device), "world_size": world},
    }
    if rank == 0:
        write_json(run_dir / "metrics.json", metrics)
    if distributed:
        dist.barrier()
    return jsonable(metrics)


# ----------------------------------------------------------------------------------------------------------
# CLI


def add_train_args(parser: argparse.ArgumentParser, skip: tuple = ()) -> argparse.ArgumentParser:
    """Add TrainConfig options to ``parser`` (names in ``skip`` are left out, e.g. for the study CLI)."""
    d = TrainConfig()
    lw = LossWeights()

    def add(name, *args, **kw):
        if name not in skip:
            parser.add_argument(*args, **kw)

    add("model", "--model", default=d.model, help="mtl | cat | mtl_no_landmarks | mtl_pool | mtl_bi")
    add("data_root", "--data-root", default=d.data_root)
    add("run_dir", "--run-dir", default=d.run_dir)
    add("epochs", "--epochs", type=int, default=d.epochs)
    add("batch_size", "--batch-size", type=int, default=d.batch_size, help="per process")
    add("eval_batch_size", "--eval-batch-size", type=int, default=None)
    add("lr", "--lr", type=float, default=d.lr)
    add("weight_decay", "--weight-decay", type=float, default=d.weight_decay)
    add("lr_schedule", "--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule)
    add("lr_step_size", "--lr-step-size", type=int, default=d.lr_step_size)
    add("lr_gamma", "--lr-gamma", type=float, default=d.lr_gamma)
    add("image_size", "--image-size", type=int, default=d.image_size)
    add("width", "--width", type=float, default=d.width)
    add("backbone", "--backbone", default=d.backbone)
    add("pretrained", "--pretrained", default=None, help="PATH or 'torchvision' (never downloads)")
    add("device", "--device", default=d.device)
    add("seed", "--seed", type=int, default=d.seed)
    add("data_seed", "--data-seed", type=int, default=d.data_seed)
    add("resume", "--resume", action="store_true")
    add("compile", "--compile", action="store_true")
    add("bf16", "--bf16", action=argparse.BooleanOptionalAction, default=None)
    add("channels_last", "--channels-last", action=argparse.BooleanOptionalAction, default=None)
    add("deterministic", "--deterministic", action=argparse.BooleanOptionalAction, default=None)
    add("max_items", "--max-items", type=int, default=None)
    add("max_batches", "--max-batches", type=int, default=None)
    add("patience", "--patience", type=int, default=None)
    add("select_metric", "--select-metric", default=d.select_metric)
    add("num_workers", "--workers", dest="num_workers", type=int, default=None)
    add("augment", "--augment", action="store_true")
    add("pad_to_square", "--pad-to-square", action="store_true")
    add("cache_dir", "--cache-dir", default=None)
    add("loss_weights", "--w-category", type=float, default=lw.category)
    add("loss_weights", "--w-attribute", type=float, default=lw.attribute)
    add("loss_weights", "--w-landmark", type=float, default=lw.landmark)
    add("heatmap_sigma", "--heatmap-sigma", type=float, default=None, help="pixels at input resolution")
    add("attr_pos_weight", "--attr-pos-weight", type=float, default=None)
    add("sync_every", "--sync-every", type=int, default=None)
    add("threads", "--threads", type=int, default=None,
        help="CPU threads (torch.set_num_threads); 1 is much faster on a CPU shared with other jobs")
    add("progress", "--no-progress", dest="progress", action="store_false")
    return parser


def config_from_args(args: argparse.Namespace, **overrides) -> TrainConfig:
    d = vars(args).copy()
    lw = LossWeights(d.pop("w_category", LossWeights.category), d.pop("w_attribute", LossWeights.attribute),
                     d.pop("w_landmark", LossWeights.landmark))
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    kw = {k: v for k, v in d.items() if k in names}
    kw["loss_weights"] = lw
    kw.update(overrides)
    return TrainConfig(**kw)


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
        lines.append(f"       attr top3 " + " ".join(f"{t} {g('attr_top3_' + t)}" for t in
                                                     ("texture", "fabric", "shape", "part", "style",
                                                      "all_grouped", "all_strict")))
        lines.append(f"       landmark NE mean {g('landmark_ne_mean')}")
    t = metrics.get("timing") or {}
    if t:
        ips = t.get("mean_images_per_s")
        lines.append(f"  wall {t.get('wall_seconds', 0):.1f}s, train {ips if ips is None else round(ips, 1)} img/s "
                     f"on {t.get('device')} x{t.get('world_size')}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m vfu_nb.train", description=__doc__.split("\n")[0])
    add_train_args(parser)
    args = parser.parse_args(argv)
    metrics = train(config_from_args(args))
    if _dist_info()[1] == 0:
        print(format_metrics(metrics), flush=True)
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    return metrics


if __name__ == "__main__":
    main()
