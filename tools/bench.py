"""Benchmarks that print numbers: ``python -m tools.bench {parse,metrics,data,train}`` from the repository root
(see docs/benchmarks.md).

- ``parse``: writes a full-size (289,222 rows x 1,000 attributes) annotation set and times load_annotations.
- ``metrics``: :meth:`vfu_nb.metrics.EvalAccumulator.compute` on a random split of DeepFashion-C's test size,
  with and without mAP (the times include joining the batches).
- ``data``: images/s of every input path side by side: JPEG decode per item, the uint8 cache per item through
  a DataLoader (0 and N workers, with and without the per-item torchvision augmentation), and
  :class:`vfu_nb.data.loader.BatchLoader` with and without batch augmentation on each device; medians of repetitions.
- ``train``: the trainer's own step (:func:`vfu_nb.training.loop.training_step`, with the model, loss and device
  settings the trainer makes from the same :class:`~vfu_nb.training.config.TrainConfig`): images/s (median over
  timed windows; the device is synchronised only at window boundaries), GFLOPs per image, achieved TFLOP/s and fraction of peak, for each ``--batch-size``; inputs
  random on the device, gathered from a uint8 memmap, or (``--batch-loader``) from a real dataset's cache
  through the BatchLoader. ``--compile`` and ``--cuda-graphs`` (torch.compile mode "reduce-overhead").

Every number is a lower bound on a shared machine: other processes can only make it slower.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import re
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from vfu_nb.data.annotations import SLOTS_BY_CLOTHES_TYPE, Annotations, load_annotations, write_annotations

FULL_ROWS = 289_222

# Dense bf16 tensor-core peaks (TFLOP/s, FP32 accumulate, no sparsity). First match wins, so order matters.
GPU_PEAK_TFLOPS = [
    (r"H200", 989.4, "H200 dense bf16"),
    (r"H100.*PCIe", 756.0, "H100 PCIe dense bf16"),
    (r"H100", 989.4, "H100 SXM dense bf16"),
    (r"A100", 312.0, "A100 dense bf16"),
    (r"\bL4\b", 121.0, "L4 dense bf16"),
    (r"RTX 4090", 165.0, "RTX 4090 dense bf16 (fp32 accumulate)"),
]


# ----------------------------------------------------------------------------------------------------------
# parse


def random_annotations(n: int = FULL_ROWS, num_attributes: int = 1000, seed: int = 0) -> Annotations:
    """A random but valid Annotations of DeepFashion-C's full size (no images), for parser benchmarks."""
    rng = np.random.default_rng(seed)
    category_types = np.repeat([1, 2, 3], [20, 16, 14])
    category = rng.integers(0, 50, n)
    clothes_type = category_types[category]
    visibility = np.full((n, 8), -1, dtype=np.int64)
    for t, slots in SLOTS_BY_CLOTHES_TYPE.items():
        rows = np.flatnonzero(clothes_type == t)
        visibility[np.ix_(rows, slots)] = rng.integers(0, 3, (len(rows), len(slots)))
    x1y1 = rng.integers(0, 100, (n, 2))
    bbox = np.concatenate([x1y1, x1y1 + rng.integers(50, 200, (n, 2))], axis=1).astype(np.float32)
    return Annotations(
        root=Path("."),
        image_names=np.array([f"img/Item_{i // 50:06d}/img_{i % 50 + 1:08d}.jpg" for i in range(n)]),
        split=rng.choice(["train", "val", "test"], n, p=[0.72, 0.14, 0.14]),
        clothes_type=clothes_type, category=category,
        category_names=[f"Category{c}" for c in range(50)], category_types=category_types,
        attributes=np.where(rng.random((n, num_attributes)) < 0.0033, 1, -1).astype(np.int8),
        attribute_names=[f"attribute {a}" for a in range(num_attributes)],
        attribute_types=rng.integers(1, 6, num_attributes),
        bbox=bbox, landmarks=rng.integers(0, 300, (n, 8, 2)).astype(np.float32),
        landmark_visibility=visibility,
    )


def bench_parse(rows: int, keep: str | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(keep or tmp)
        t0 = time.perf_counter()
        write_annotations(root, random_annotations(rows))
        written = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in root.rglob("*.txt"))
        t0 = time.perf_counter()
        ann = load_annotations(root)
        parsed = time.perf_counter() - t0
    result = {"rows": len(ann), "attributes": len(ann.attribute_names), "bytes": size,
              "write_s": round(written, 2), "parse_s": round(parsed, 2)}
    print(f"load_annotations: {result['rows']:,} rows x {result['attributes']} attributes "
          f"({size / 2**20:.0f} MiB of text) parsed in {parsed:.2f} s (writing took {written:.1f} s)")
    return result


def bench_metrics(n: int = 40_000, num_attributes: int = 1000, num_categories: int = 50, num_landmarks: int = 8,
                  batch: int = 64, seed: int = 0) -> dict:
    """Seconds for :meth:`EvalAccumulator.compute` on a random split of DeepFashion-C's size (CPU)."""
    from vfu_nb.metrics import EvalAccumulator

    g = torch.Generator().manual_seed(seed)
    types = torch.arange(num_attributes) % 5 + 1
    labels = torch.where(torch.rand(n, num_attributes, generator=g) < 0.0033, 1, -1).to(torch.int8)
    acc = EvalAccumulator(types)
    for start in range(0, n, batch):
        b = min(batch, n - start)
        acc.update(torch.randn(b, num_categories, generator=g), torch.randint(num_categories, (b,), generator=g),
                   torch.randn(b, num_attributes, generator=g), labels[start:start + b],
                   torch.rand(b, num_landmarks, 2, generator=g), torch.rand(b, num_landmarks, 2, generator=g),
                   torch.randint(-1, 3, (b, num_landmarks), generator=g), attributes_known=labels[start:start + b] != 0)
    result = {"n": n, "attributes": num_attributes, "threads": torch.get_num_threads()}
    for name, with_map in (("compute_without_map_s", False), ("compute_with_map_s", True)):
        acc._joined = None
        t0 = time.perf_counter()
        acc.compute(with_map=with_map)
        result[name] = time.perf_counter() - t0
    print(f"{result['n']} images x {result['attributes']} attributes, {result['threads']} thread(s): compute "
          f"{result['compute_without_map_s']:.2f} s without mAP, {result['compute_with_map_s']:.2f} s with mAP")
    return result


# ----------------------------------------------------------------------------------------------------------
# Devices and peaks


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({torch.get_num_threads()} threads)"


def known_gpu_peak(name: str) -> tuple[float, str] | tuple[None, str]:
    """(TFLOP/s, label) from GPU_PEAK_TFLOPS for a CUDA device name, or (None, reason)."""
    for pattern, tflops, label in GPU_PEAK_TFLOPS:
        if re.search(pattern, name):
            return tflops, label
    return None, f"no known peak for {name!r}"


def measure_matmul_peak(device: torch.device, n: int = 2048, reps: int = 5,
                        dtype: torch.dtype = torch.float32) -> float:
    """Measured dense matmul rate in TFLOP/s: n^3 matmuls, fastest of ``reps`` after one warm-up (a peak, so the
    best repetition counts; on a shared CPU other processes can only make it look slower)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    synchronize(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / min(times) / 1e12


def device_peak(device: torch.device, override: float | None = None) -> tuple[float | None, str]:
    """Peak TFLOP/s used for the fraction-of-peak figure, and where it came from."""
    if override:
        return override, "given with --peak-tflops"
    if device.type == "cuda":
        return known_gpu_peak(torch.cuda.get_device_name(device))
    return measure_matmul_peak(device), "measured fp32 2048^3 matmul"


class RandomBatches:
    """An endless batch sampler: lists of ``batch_size`` distinct random items of ``range(n)``, seeded."""

    def __init__(self, n: int, batch_size: int, seed: int = 0):
        self.n, self.batch_size, self.seed = n, min(batch_size, n), seed

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        while True:
            yield rng.choice(self.n, self.batch_size, replace=False).tolist()


# ----------------------------------------------------------------------------------------------------------
# data


def loader_rate(loader, device: torch.device, *, min_batches: int, min_seconds: float,
                step_s: float = 0.0) -> float:
    """Images/s of iterating ``loader`` (endless): the first batch (start-up) untimed, then at least
    ``min_batches`` batches and ``min_seconds``; ``step_s`` of sleep per batch stands in for a device step."""
    it = iter(loader)
    try:
        next(it)
        synchronize(device)
        images = batches = 0
        t0 = time.perf_counter()
        while batches < min_batches or time.perf_counter() - t0 < min_seconds:
            images += len(next(it)["index"])
            batches += 1
            if step_s:
                time.sleep(step_s)
        synchronize(device)
        return images / (time.perf_counter() - t0)
    finally:
        if hasattr(it, "close"):
            it.close()
        del it                                   # a DataLoader iterator shuts its workers down


def bench_data(root: str, split: str = "train", image_size: int = 224, batch_size: int = 64,
               workers: int | None = None, repeats: int = 5, min_seconds: float = 1.0, min_batches: int = 3,
               cache_dir: str | None = None, target_img_s: float = 4000.0) -> dict:
    """Images/s of each input path, interleaved over ``repeats`` repetitions; medians and ratios to decode."""
    from torch.utils.data import DataLoader

    from vfu_nb.data.dataset import DeepFashionC
    from vfu_nb.data.loader import BatchLoader
    from vfu_nb.training.runtime import seed_worker

    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    ann = load_annotations(root)
    tmp = None if cache_dir else tempfile.TemporaryDirectory(prefix="vfu_bench_")
    cache_dir = cache_dir or tmp.name
    try:
        common = dict(annotations=ann, uint8=True, progress=False)
        t0 = time.perf_counter()
        cached = DeepFashionC(root, split, image_size, cache=True, cache_dir=cache_dir, workers=workers or None,
                              **common)
        build_s = time.perf_counter() - t0
        datasets = {"decode": DeepFashionC(root, split, image_size, **common), "cache": cached,
                    "cache + v2 augmentation": DeepFashionC(root, split, image_size, cache=True, augment=True,
                                                            cache_dir=cache_dir, **common)}
        step_s = batch_size / target_img_s
        step_device = devices[-1]
        worker_init = functools.partial(seed_worker, parent_pid=os.getpid())   # workers die with this process
        rows = []   # (label, make(seed) -> endless loader, device, seconds of simulated step per batch)
        for name, ds in datasets.items():
            for w in sorted({0, workers}):
                rows.append((f"{name} per item, DataLoader, {w} workers",
                             lambda seed, ds=ds, w=w: DataLoader(ds, batch_sampler=RandomBatches(len(ds), batch_size,
                                                                                                seed), num_workers=w,
                                                                 worker_init_fn=worker_init),
                             torch.device("cpu"), 0.0))

        def batch_loader(device, augment=False, prefetch=2):
            return lambda seed: BatchLoader(cached, RandomBatches(len(cached), batch_size, seed), device,
                                            augment=augment, generator=torch.Generator().manual_seed(seed),
                                            prefetch=prefetch)

        for device in devices:
            rows.append((f"batch loader ({device.type})", batch_loader(device), device, 0.0))
            rows.append((f"batch loader + augmentation ({device.type})", batch_loader(device, True), device, 0.0))
        for prefetch in (0, 2):
            rows.append((f"batch loader ({step_device.type}), prefetch {prefetch}, {1000 * step_s:.0f} ms step",
                         batch_loader(step_device, prefetch=prefetch), step_device, step_s))
        rows.append((f"no loader, {1000 * step_s:.0f} ms step (the ceiling)",
                     lambda seed: itertools.repeat({"index": range(batch_size)}), step_device, step_s))
        runs: dict[str, list[float]] = {label: [] for label, *_ in rows}
        for rep in range(repeats):
            for label, make, device, sleep in rows:
                runs[label].append(loader_rate(make(rep), device, min_batches=min_batches,
                                               min_seconds=min_seconds, step_s=sleep))
    finally:
        if tmp:
            tmp.cleanup()
    reference = f"decode per item, DataLoader, {workers} workers"
    medians = {label: statistics.median(r) for label, r in runs.items()}
    result = {
        "root": str(root), "split": split, "images": len(cached), "image_size": image_size,
        "batch_size": batch_size, "workers": workers, "repeats": repeats, "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "cache_build_s": round(build_s, 2), "reference": reference,
        "simulated_step_ms": 1000 * step_s,
        "paths": [{"path": label, "img_s": round(medians[label], 1), "runs": [round(r, 1) for r in runs[label]],
                   "x_decode": round(medians[label] / medians[reference], 2)} for label in runs],
        "batch_loader_vs_cache_item_0_workers": round(
            medians["batch loader (cpu)"] / medians["cache per item, DataLoader, 0 workers"], 2),
        "batch_augmentation_vs_item_augmentation_0_workers": round(
            medians["batch loader + augmentation (cpu)"]
            / medians["cache + v2 augmentation per item, DataLoader, 0 workers"], 2),
    }
    print(format_data_table(result))
    return result


def format_data_table(r: dict) -> str:
    width = max(len(p["path"]) for p in r["paths"])
    lines = [f"data path on {r['root']} ({r['split']}, {r['images']} images, {r['image_size']} px, batch "
             f"{r['batch_size']}; {r['cpu_count']} CPUs, {r['threads']} torch threads): median img/s of "
             f"{r['repeats']} repetitions (lower bounds on a shared machine)",
             f"  cache ready in {r['cache_build_s']:.1f} s (built with {max(1, r['workers'])} processes unless "
             f"--cache-dir held it)",
             f"  {'path':<{width}}  {'img/s':>9}  {'min':>9}  {'max':>9}  {'x decode':>8}"]
    for p in r["paths"]:
        lines.append(f"  {p['path']:<{width}}  {p['img_s']:9.1f}  {min(p['runs']):9.1f}  {max(p['runs']):9.1f}  "
                     f"{p['x_decode']:8.2f}")
    lines += [f"  x decode: relative to '{r['reference']}'; 'ms step': a sleep per batch standing in for a device "
              f"step at {r['batch_size'] / r['simulated_step_ms'] * 1000:.0f} img/s",
              f"  batch loader / cache per item (0 workers): {r['batch_loader_vs_cache_item_0_workers']:.2f}x; "
              f"batch augmentation (cpu) / per-item v2 augmentation (0 workers): "
              f"{r['batch_augmentation_vs_item_augmentation_0_workers']:.2f}x"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# train: inputs and the training step


def random_batches(n: int, batch_size: int, image_size: int, num_categories: int, num_attributes: int,
                   device: torch.device, seed: int = 0) -> list[dict]:
    """``n`` distinct random batches in the dataset's collated layout, uint8 images, already on ``device``."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for _ in range(n):
        b = batch_size
        vis = torch.tensor([0, 0, 0, 0, 1, 2, -1])[torch.randint(0, 7, (b, 8), generator=g)]
        attrs = (torch.rand(b, num_attributes, generator=g) < 0.01).float()
        batch = {
            "image": torch.randint(0, 256, (b, 3, image_size, image_size), dtype=torch.uint8, generator=g),
            "category": torch.randint(0, num_categories, (b,), generator=g),
            "attributes": attrs,
            "attributes_known": torch.ones(b, num_attributes),
            "landmarks": torch.rand(b, 8, 2, generator=g) * 0.9 + 0.05,
            "landmark_visibility": vis,
        }
        out.append({k: v.to(device) for k, v in batch.items()})
    return out


def trainer_step(model, optimizer, loss_fn, rt, cuda_graphs: bool = False):
    """One step of the trainer (:func:`vfu_nb.training.loop.training_step`) on a batch whose ``image`` is uint8; returns
    the detached total loss, still on the device."""
    from vfu_nb.conventions import LOSS_TERMS
    from vfu_nb.training.loop import training_step

    total = LOSS_TERMS.index("total")

    def step(batch: dict) -> torch.Tensor:
        return training_step(model, optimizer, batch, loss_fn, rt, cuda_graphs=cuda_graphs)[total]

    return step


def time_windows(step, next_batch, *, batch_size: int, warmup: int, steps: int, windows: int,
                 device: torch.device) -> tuple[list[float], float]:
    """Warm up, then time ``windows`` windows of ``steps`` steps; returns (img/s per window, last mean loss).

    The device is synchronised only at window boundaries; losses are accumulated on the device.
    """
    for _ in range(warmup):
        step(next_batch())
    synchronize(device)
    rates, loss = [], float("nan")
    for _ in range(windows):
        acc = torch.zeros((), device=device)
        t0 = time.perf_counter()
        for _ in range(steps):
            acc += step(next_batch()).float()
        synchronize(device)
        rates.append(steps * batch_size / (time.perf_counter() - t0))
        loss = float(acc) / steps
        if not np.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss}")
    return rates, loss


def host_syncs_per_step(step, next_batch, device: torch.device, steps: int = 5) -> float | None:
    """Synchronising CUDA calls per training step (torch.cuda sync debug mode), or None off CUDA."""
    if device.type != "cuda":
        return None
    synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                step(next_batch())
        finally:
            torch.cuda.set_sync_debug_mode("default")
    synchronize(device)
    return sum("synchroniz" in str(w.message) for w in caught) / steps


def count_train_flops(model, batch: dict, loss_fn, rt) -> float:
    """FLOPs of one forward + backward per image (FlopCounterMode: convs and matmuls; 1 MAC = 2 FLOP)."""
    from torch.utils.flop_counter import FlopCounterMode

    from vfu_nb.training.runtime import prepare_images

    images = prepare_images(batch["image"], rt.channels_last)
    counter = FlopCounterMode(display=False)
    with counter:
        with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.bf16):
            outputs = model(images)
        loss_fn(outputs, batch)["total"].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / images.shape[0]


def cached_input_rate(step, label_batches: list[dict], *, batch_size: int, image_size: int,
                      device: torch.device, n_images: int | None = None, warmup: int = 5, steps: int = 20,
                      windows: int = 3, tmp_dir: str | None = None, seed: int = 0) -> dict:
    """Training rate when images come from a uint8 memmap on disk in the data cache's layout (N x S x S x 3).

    Builds a temporary memmap of ``n_images`` random images, then times ``step`` on batches gathered with
    ``torch.from_numpy(memmap[idx])`` (random indices), pinned and copied with ``non_blocking=True`` on CUDA,
    permuted to NCHW on the device (a channels_last view) and normalised inside ``step``. Labels rotate through
    ``label_batches``. Also times the gather + copy alone. The file is deleted afterwards.
    """
    n = n_images or max(8 * batch_size, 256)
    rng = np.random.default_rng(seed)
    cuda = device.type == "cuda"
    result = {"n_images": n, "layout": "NHWC uint8 memmap", "bytes": n * image_size * image_size * 3}
    with tempfile.TemporaryDirectory(prefix="vfu_bench_", dir=tmp_dir) as tmp:
        path = os.path.join(tmp, "images.u8")
        mm = np.memmap(path, np.uint8, "w+", shape=(n, image_size, image_size, 3))
        for start in range(0, n, 256):
            stop = min(n, start + 256)
            mm[start:stop] = rng.integers(0, 256, size=(stop - start, image_size, image_size, 3), dtype=np.uint8)
        mm.flush()
        del mm
        cache = np.memmap(path, np.uint8, "r", shape=(n, image_size, image_size, 3))

        def gather() -> torch.Tensor:
            idx = rng.choice(n, size=batch_size, replace=False)
            images = torch.from_numpy(cache[idx])
            if cuda:
                images = images.pin_memory().to(device, non_blocking=True)
            else:
                images = images.to(device)
            return images.permute(0, 3, 1, 2)

        labels = _rotation(label_batches)

        def next_batch() -> dict:
            return {**labels(), "image": gather()}

        rates, loss = time_windows(step, next_batch, batch_size=batch_size, warmup=warmup, steps=steps,
                                   windows=windows, device=device)
        result.update(img_s=statistics.median(rates), window_img_s=rates, loss=loss,
                      gather_img_s=_input_only_rate(gather, batch_size, steps, windows, device))
        del cache
    return result


def batch_loader_rate(step, dataset, *, batch_size: int, device: torch.device, augment: bool, prefetch: int,
                      warmup: int, steps: int, windows: int, seed: int = 0) -> dict:
    """Training rate on batches of a cached DeepFashionC through :class:`vfu_nb.data.loader.BatchLoader` (random
    batches, optional augmentation on the device), and the loader's own rate without a step."""
    from vfu_nb.data.loader import BatchLoader

    loader = BatchLoader(dataset, RandomBatches(len(dataset), batch_size, seed), device, augment=augment,
                         generator=torch.Generator().manual_seed(seed), prefetch=prefetch)
    it = iter(loader)
    try:
        rates, loss = time_windows(step, lambda: next(it), batch_size=batch_size, warmup=warmup, steps=steps,
                                   windows=windows, device=device)
        syncs = host_syncs_per_step(step, lambda: next(it), device)
        alone = _input_only_rate(lambda: next(it), batch_size, steps, windows, device)
    finally:
        it.close()
    return {"img_s": statistics.median(rates), "window_img_s": rates, "loss": loss, "loader_img_s": alone,
            "augment": augment, "prefetch": prefetch, "images": len(dataset), "host_syncs_per_step": syncs}


def _rotation(batches: list):
    """A function returning the batches in turn, endlessly."""
    counter = iter(range(1 << 62))
    return lambda: batches[next(counter) % len(batches)]


def _input_only_rate(next_input, batch_size: int, steps: int, windows: int, device: torch.device) -> float:
    """Median images/s of producing inputs alone (no step), over ``windows`` windows of ``steps``."""
    rates = []
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(steps):
            next_input()
        synchronize(device)
        rates.append(steps * batch_size / (time.perf_counter() - t0))
    return statistics.median(rates)


# ----------------------------------------------------------------------------------------------------------
# train: the run


def bench_config(args: argparse.Namespace):
    """The :class:`vfu_nb.training.config.TrainConfig` of the benchmark's settings: what the trainer would run
    with them."""
    from vfu_nb.training.config import TrainConfig

    choice = {"auto": None, "bf16": True, "on": True, "off": False}
    return TrainConfig(model=args.model, image_size=args.image_size, width=args.width, backbone=args.backbone,
                       lr=args.lr, device=args.device, threads=args.threads, seed=args.seed, bf16=choice[args.amp],
                       channels_last=choice[args.channels_last], deterministic=False,
                       compile=args.compile, cuda_graphs=args.cuda_graphs, progress=False)


def bench_train(args: argparse.Namespace) -> dict:
    """Run the training benchmark described by ``args`` for each batch size; returns the numbers as a dict."""
    from vfu_nb.models import count_parameters
    from vfu_nb.training.builders import make_loss, make_model
    from vfu_nb.training.runtime import setup_runtime

    config = bench_config(args)
    rt = setup_runtime(config, 1, 0, 0)      # device, threads, seeds, cudnn and TF32 flags as the trainer sets them
    device, cuda = rt.device, rt.is_cuda

    dataset = None
    num_classes, num_attributes = args.num_classes, args.num_attributes
    if args.batch_loader:
        from vfu_nb.data.dataset import DeepFashionC

        dataset = DeepFashionC(args.root, args.split, args.image_size, cache=True, uint8=True,
                               cache_dir=args.cache_dir, progress=False)
        num_classes = len(dataset.annotations.category_names)
        num_attributes = len(dataset.annotations.attribute_names)

    model = make_model(config, num_classes, num_attributes, device, rt.channels_last, pretrained=False)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, **({"fused": True} if rt.fused_adam else {}))
    weights, loss_fn = make_loss(config, model, rt)
    compile_mode = "reduce-overhead" if args.cuda_graphs else ("default" if args.compile else None)
    result = {
        "model": args.model, "image_size": args.image_size, "width": args.width, "backbone": args.backbone,
        "num_classes": num_classes, "num_attributes": num_attributes,
        "device": str(device), "device_name": device_name(device), "torch": torch.__version__,
        "dtype": "bf16 autocast" if rt.bf16 else "fp32", "channels_last": rt.channels_last,
        "compile": compile_mode, "parameters": count_parameters(model),
        "loss": f"vfu_nb.losses.multitask_loss ({weights})",
        "steps": args.steps, "warmup": args.warmup, "windows": args.windows,
    }
    if dataset is not None:
        result["batch_loader"] = {"root": str(args.root), "split": args.split, "images": len(dataset),
                                  "augment": args.augment, "prefetch": args.prefetch}

    flops = None
    if not args.no_flops:
        flop_batch = random_batches(1, 2, args.image_size, num_classes, num_attributes, device, args.seed)[0]
        t0 = time.perf_counter()
        flops = count_train_flops(model, flop_batch, loss_fn, rt)
        result["train_gflop_per_image"] = flops / 1e9
        result["flop_count_seconds"] = time.perf_counter() - t0
    peak, peak_source = device_peak(device, args.peak_tflops)
    result.update(peak_tflops=peak, peak_source=peak_source)

    forward = model if compile_mode is None else torch.compile(model, mode=compile_mode, dynamic=False)
    step = trainer_step(forward, optimizer, loss_fn, rt, args.cuda_graphs)
    windows = dict(warmup=args.warmup, steps=args.steps, windows=args.windows, device=device)
    result["runs"] = []
    for batch_size in args.batch_size:
        batches = random_batches(max(1, args.buffers), batch_size, args.image_size, num_classes, num_attributes,
                                 device, args.seed)
        rotate = _rotation(batches)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        rates, loss = time_windows(step, rotate, batch_size=batch_size, **windows)
        run = {"batch_size": batch_size, "img_s": statistics.median(rates), "window_img_s": rates,
               "final_loss": loss, "host_syncs_per_step": host_syncs_per_step(step, rotate, device)}
        if cuda:
            run["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
        if not args.no_cache:
            run["cache"] = cached_input_rate(
                step, batches, batch_size=batch_size, image_size=args.image_size, device=device,
                n_images=args.cache_images, warmup=max(2, args.warmup // 2), steps=args.steps,
                windows=max(1, min(args.windows, 3)), tmp_dir=args.memmap_dir, seed=args.seed + 1)
        if dataset is not None:
            run["batch_loader"] = batch_loader_rate(
                step, dataset, batch_size=batch_size, device=device, augment=args.augment, prefetch=args.prefetch,
                warmup=max(2, args.warmup // 2), steps=args.steps, windows=max(1, min(args.windows, 3)),
                seed=args.seed + 2)
        for key in (None, "cache", "batch_loader"):
            part = run if key is None else run.get(key)
            if part is not None and flops is not None:
                part["achieved_tflops"] = part["img_s"] * flops / 1e12
                if peak:
                    part["fraction_of_peak"] = part["achieved_tflops"] / peak
        result["runs"].append(run)
    return result


def format_train_table(r: dict) -> str:
    """The run's settings, then one column per batch size."""
    compiled = {None: "eager", "default": "torch.compile",
                "reduce-overhead": "torch.compile reduce-overhead (CUDA graphs)"}[r["compile"]]
    head = [
        ("model", f"{r['model']}  (width {r['width']:g}, {r['backbone']}, {r['image_size']} px, "
                  f"{r['num_classes']} classes, {r['num_attributes']} attributes)"),
        ("device", f"{r['device_name']}  [torch {r['torch']}]"),
        ("parameters", f"{r['parameters'] / 1e6:.2f} M"),
        ("step", f"{r['dtype']}, {'channels_last' if r['channels_last'] else 'NCHW'}, {compiled}, Adam"),
        ("loss", r["loss"]),
        ("timing", f"median of {r['windows']} windows x {r['steps']} steps after {r['warmup']} warm-up steps; "
                   "device synchronised at window boundaries only"),
    ]
    if "train_gflop_per_image" in r:
        head.append(("train GFLOP / image", f"{r['train_gflop_per_image']:.3f}  (FlopCounterMode, fwd+bwd)"))
    head.append(("peak TFLOP/s", f"{r['peak_tflops']:.4g}  ({r['peak_source']})" if r.get("peak_tflops")
                 else f"unknown ({r['peak_source']})"))
    if "batch_loader" in r:
        b = r["batch_loader"]
        head.append(("batch loader input", f"{b['root']} {b['split']} ({b['images']} images), augment "
                                           f"{'on' if b['augment'] else 'off'}, prefetch {b['prefetch']}"))

    def cell(run, key, fmt):
        part = run if key[0] is None else run.get(key[0])
        value = None if part is None else part.get(key[1])
        return "-" if value is None else fmt(value)

    pct = lambda v: f"{100 * v:.1f} %"          # noqa: E731
    num = lambda v: f"{v:.1f}"                 # noqa: E731
    rows = [("random inputs img/s", (None, "img_s"), num),
            ("  min .. max", (None, "window_img_s"), lambda w: f"{min(w):.0f} .. {max(w):.0f}"),
            ("  achieved TFLOP/s", (None, "achieved_tflops"), lambda v: f"{v:.4g}"),
            ("  fraction of peak", (None, "fraction_of_peak"), pct),
            ("  host syncs / step", (None, "host_syncs_per_step"), lambda v: f"{v:g}"),
            ("  max memory GiB", (None, "max_memory_gib"), lambda v: f"{v:.2f}"),
            ("  final loss", (None, "final_loss"), lambda v: f"{v:.4f}"),
            ("memmap input img/s", ("cache", "img_s"), num),
            ("  gather + copy alone", ("cache", "gather_img_s"), num),
            ("batch loader img/s", ("batch_loader", "img_s"), num),
            ("  fraction of peak", ("batch_loader", "fraction_of_peak"), pct),
            ("  host syncs / step", ("batch_loader", "host_syncs_per_step"), lambda v: f"{v:g}"),
            ("  loader alone", ("batch_loader", "loader_img_s"), num)]
    table = [(label, [cell(run, key, fmt) for run in r["runs"]]) for label, key, fmt in rows]
    table = [(label, cells) for label, cells in table if any(c != "-" for c in cells)]
    key_width = max(len(k) for k, _ in head + table)
    lines = [f"{k:<{key_width}}  {v}" for k, v in head]
    lines.append(f"{'':<{key_width}}" + "".join(f"  {'batch ' + str(run['batch_size']):>14}" for run in r["runs"]))
    lines += [f"{label:<{key_width}}" + "".join(f"  {c:>14}" for c in cells) for label, cells in table]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    from vfu_nb.models import BACKBONES, MODEL_NAMES

    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    defaults = argparse.ArgumentDefaultsHelpFormatter

    p = sub.add_parser("parse", help="time load_annotations on a generated full-size annotation set",
                       formatter_class=defaults)
    p.add_argument("--rows", type=int, default=FULL_ROWS)
    p.add_argument("--keep", help="write the annotation set here instead of a temporary folder")

    m = sub.add_parser("metrics", help="time EvalAccumulator.compute on a DeepFashion-C sized split",
                       formatter_class=defaults)
    m.add_argument("--n", type=int, default=40_000, help="images in the split")
    m.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")

    d = sub.add_parser("data", help="images/s of every input path, side by side", formatter_class=defaults)
    d.add_argument("--root", required=True, help="a DeepFashion-C tree (e.g. data/synthetic)")
    d.add_argument("--split", default="train")
    d.add_argument("--image-size", type=int, default=224)
    d.add_argument("--batch-size", type=int, default=64)
    d.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers for the N-worker rows (default: min(8, CPUs), the trainer's CUDA pick)")
    d.add_argument("--repeats", type=int, default=5, help="repetitions (paths interleaved); medians reported")
    d.add_argument("--seconds", type=float, default=1.0, help="minimum timed seconds per path and repetition")
    d.add_argument("--min-batches", type=int, default=3)
    d.add_argument("--cache-dir", default=None, help="reuse the uint8 cache here (default: a temporary folder)")
    d.add_argument("--target-img-s", type=float, default=4000.0,
                   help="the simulated device step takes batch-size / this many seconds")

    t = sub.add_parser("train", help="training-step throughput, FLOPs and fraction of peak",
                       formatter_class=defaults)
    t.add_argument("--model", default="mtl", choices=MODEL_NAMES)
    t.add_argument("--image-size", type=int, default=224)
    t.add_argument("--batch-size", type=int, nargs="+", default=[8, 64], help="one run per batch size")
    t.add_argument("--width", type=float, default=1.0)
    t.add_argument("--backbone", default="vgg16", choices=BACKBONES)
    t.add_argument("--num-classes", type=int, default=50)
    t.add_argument("--num-attributes", type=int, default=1000)
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    t.add_argument("--compile", action="store_true", help="torch.compile the model (compile time is in warm-up)")
    t.add_argument("--cuda-graphs", action="store_true",
                   help="torch.compile mode='reduce-overhead' (CUDA graphs on CUDA); implies --compile")
    t.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"],
                   help="auto: bf16 autocast on CUDA, fp32 on CPU")
    t.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"], help="auto: on for CUDA")
    t.add_argument("--steps", type=int, default=20, help="steps per timed window")
    t.add_argument("--warmup", type=int, default=10)
    t.add_argument("--windows", type=int, default=5)
    t.add_argument("--buffers", type=int, default=4, help="distinct random input batches rotated")
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    t.add_argument("--peak-tflops", type=float, default=None, help="override the peak used for the fraction")
    t.add_argument("--no-flops", action="store_true", help="skip the FlopCounterMode pass")
    t.add_argument("--no-cache", action="store_true", help="skip the uint8-memmap input measurement")
    t.add_argument("--cache-images", type=int, default=None, help="images in the temporary memmap")
    t.add_argument("--memmap-dir", default=None, help="where the temporary memmap goes (default: system tmp)")
    t.add_argument("--batch-loader", action="store_true",
                   help="also train on batches of --root's cache through vfu_nb.data.loader.BatchLoader")
    t.add_argument("--root", default=None, help="DeepFashion-C tree for --batch-loader (its class and "
                                                "attribute counts then apply to every input)")
    t.add_argument("--split", default="train")
    t.add_argument("--cache-dir", default=None, help="the dataset cache folder (default: <root>/.vfu_cache)")
    t.add_argument("--augment", action="store_true", help="batch augmentation on the device (--batch-loader)")
    t.add_argument("--prefetch", type=int, default=2, help="batches the loader's thread prepares ahead")
    t.add_argument("--seed", type=int, default=0)
    for q in (p, m, d, t):
        q.add_argument("--json", default=None, metavar="PATH", help="also write the numbers to this JSON file")
    return parser


def main(argv=None) -> dict:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command == "parse":
        result = bench_parse(args.rows, args.keep)
    elif args.command == "metrics":
        if args.threads:
            torch.set_num_threads(args.threads)
        result = bench_metrics(n=args.n)
    elif args.command == "data":
        result = bench_data(args.root, args.split, args.image_size, args.batch_size, args.workers, args.repeats,
                            args.seconds, args.min_batches, args.cache_dir, args.target_img_s)
    else:
        if args.batch_loader and not args.root:
            parser.error("train --batch-loader needs --root (a DeepFashion-C tree)")
        if args.cuda_graphs:
            args.compile = True
        result = bench_train(args)
        print(format_train_table(result), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
