"""Where and how a run executes: seeds and RNG states, device, DDP processes, precision and threads.

:func:`resolve_runtime` turns a :class:`~vfu_nb.training.config.TrainConfig`'s per-device settings (``None``:
pick per device) into a :class:`Runtime`; :func:`setup_runtime` also joins the process group and sets threads,
seeds and backend flags. :func:`prepare_images` puts a batch in the model's memory layout and normalises it on
the device (the training step and the evaluation loop both use it).
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from vfu_nb.losses import default_heatmap_sigma
from vfu_nb.training.config import TrainConfig


# ----------------------------------------------------------------------------------------------------------
# Seeds and RNG states


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


def seed_worker(worker_id: int, parent_pid: Optional[int] = None) -> None:
    """DataLoader ``worker_init_fn``: seed numpy and random from the worker's torch seed; with ``parent_pid`` (the
    process that iterates the loader) the worker also dies with that process (:mod:`vfu_nb.lifeline`)."""
    if parent_pid is not None:
        from vfu_nb.lifeline import die_with_parent

        die_with_parent(parent_pid)
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def get_rng_state() -> dict:
    """All RNG states as tensors / plain Python (safe for ``torch.load(weights_only=True)``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    py = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [str(name), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                  float(cached)],
        "python": [int(py[0]), [int(x) for x in py[1]], py[2]],
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys.numpy(), dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------------------
# Runtime: device, distributed, precision (everything that depends on the machine)


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def dist_info() -> tuple[int, int, int]:
    """(world size, rank, local rank) from torchrun's environment (1, 0, 0 without it)."""
    return (int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")),
            int(os.environ.get("LOCAL_RANK", "0")))


@dataclass
class Runtime:
    """The per-machine values of a run (``None`` settings resolved) and the collectives of DDP.

    The collectives are no-ops in a single process, so the trainer reads the same with and without DDP.
    """

    device: torch.device
    world: int
    rank: int
    bf16: bool
    channels_last: bool
    deterministic: bool
    num_workers: int
    sync_every: int
    heatmap_sigma: float
    eval_batch_size: int
    fused_adam: bool
    tf32: bool
    threads: int = 0

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def resolved(self) -> dict:
        """The ``resolved`` block of config.json."""
        return {"device": str(self.device), "world_size": self.world, "bf16": self.bf16,
                "channels_last": self.channels_last, "deterministic": self.deterministic,
                "num_workers": self.num_workers, "sync_every": self.sync_every, "heatmap_sigma": self.heatmap_sigma,
                "eval_batch_size": self.eval_batch_size, "fused_adam": self.fused_adam, "tf32": self.tf32,
                "threads": self.threads, "torch": torch.__version__}

    # collectives (no-ops without DDP)
    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_mean(self, t: torch.Tensor) -> torch.Tensor:
        if not self.distributed:
            return t
        t = t.clone()
        dist.all_reduce(t)
        return t / self.world

    def share(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def resolve_runtime(config: TrainConfig, world: int = 1, rank: int = 0, local_rank: int = 0) -> Runtime:
    """Resolve the device-dependent settings (pure: nothing is initialised)."""
    device = resolve_device(config.device, local_rank)
    cuda = device.type == "cuda"
    bf16 = cuda if config.bf16 is None else bool(config.bf16)
    # The batch loader needs no worker processes (one prefetch thread gathers several times the rate a GPU
    # step consumes; docs/benchmarks.md); the per-item DataLoader gets up to 8 per process on CUDA.
    workers = config.num_workers if config.loader == "items" else 0
    if workers is None:
        workers = min(8, max(1, (os.cpu_count() or 1) // max(1, world))) if cuda else 0
    return Runtime(
        device=device, world=world, rank=rank, bf16=bf16,
        channels_last=cuda if config.channels_last is None else bool(config.channels_last),
        deterministic=(not cuda) if config.deterministic is None else bool(config.deterministic),
        num_workers=workers,
        sync_every=config.sync_every or (25 if cuda else 1),
        heatmap_sigma=float(config.heatmap_sigma if config.heatmap_sigma is not None
                            else default_heatmap_sigma(config.image_size)),
        # CPU: 4 x batch (larger batches change CPU kernels' float results, not the metrics' meaning)
        eval_batch_size=config.eval_batch_size or (max(256, 4 * config.batch_size) if cuda else 4 * config.batch_size),
        fused_adam=cuda,
        # bf16 autocast: TF32 off, so the fp32 islands (landmark head, losses) really compute in fp32; the
        # bulk runs in bf16 either way. fp32 training on CUDA keeps TF32 convolutions and matmuls.
        tf32=cuda and not bf16,
    )


def setup_runtime(config: TrainConfig, world: int, rank: int, local_rank: int) -> Runtime:
    """Join the process group (DDP), set threads, seeds and backend flags; return the :class:`Runtime`."""
    rt = resolve_runtime(config, world, rank, local_rank)
    if rt.distributed and not dist.is_initialized():
        if rt.is_cuda:
            torch.cuda.set_device(rt.device)
        dist.init_process_group("nccl" if rt.is_cuda else "gloo", init_method="env://", timeout=timedelta(hours=2))
    if config.threads:
        torch.set_num_threads(config.threads)
    elif rt.distributed and not rt.is_cuda:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    rt.threads = torch.get_num_threads()
    seed_everything(config.seed, rt.deterministic)
    if rt.is_cuda:
        torch.backends.cudnn.benchmark = not rt.deterministic
        torch.backends.cuda.matmul.allow_tf32 = rt.tf32
        torch.backends.cudnn.allow_tf32 = rt.tf32
    return rt


@contextlib.contextmanager
def process_settings():
    """Restore the process-wide torch settings a run changes (notebooks and test sessions keep their own)."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.get_num_threads(), torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.set_num_threads(saved[2])
        (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
         torch.backends.cuda.matmul.allow_tf32) = saved[3:]


# ----------------------------------------------------------------------------------------------------------
# Batches on the device


def to_device(batch: dict, device: torch.device) -> dict:
    """The tensors of ``batch`` on ``device`` (``non_blocking`` copies); other values as they are."""
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def prepare_images(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Images in the model's memory layout (uint8 batches arrive NCHW or, from the batch loader, as an NHWC
    view), normalised to float; a batch already in that layout is not copied."""
    from vfu_nb.data.crops import normalize_images

    images = images.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return normalize_images(images) if images.dtype == torch.uint8 else images.float()
