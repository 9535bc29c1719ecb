"""Training-step throughput of one model: ``python -m vfu_nb.bench train --model mtl --image-size 224 ...``.

What it measures (performance notes 6.3):

1. **synthetic**: the real training step (model forward, the real ``vfu_nb.losses.multitask_loss``, backward,
   Adam) on random uint8 images that already sit on the device and are normalised there, with random labels,
   attributes, landmarks and visibilities. Several input buffers are rotated; nothing is zeros. After
   ``--warmup`` steps, ``--windows`` windows of ``--steps`` steps each are timed; the device is synchronised only
   at window boundaries, and the median window rate is reported.
2. **FLOPs**: ``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward of the eager model,
   divided by the batch; then achieved TFLOP/s = img/s x FLOP/img and the fraction of the device's peak (dense
   bf16 tensor peak from a table for known GPUs; a measured fp32 2048^3 matmul rate on CPU).
3. **memmap cache**: the same step with images gathered from a uint8 ``np.memmap`` on disk, in the layout of
   ``vfu_nb.data``'s cache (N x S x S x 3), via ``torch.from_numpy(memmap[idx])`` -> ``pin_memory`` ->
   ``to(device, non_blocking=True)`` -> permute to NCHW (a channels_last view) -> normalisation on the device
   (``cached_input_rate``). The gather alone is timed too.

On CUDA: bf16 autocast, channels_last, cudnn.benchmark, fused Adam, optional ``--compile`` (default mode,
``dynamic=False``; compile time falls in the warm-up). On CPU: fp32, contiguous, foreach Adam.
``main(argv)`` accepts the arguments with or without a leading ``train``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vfu_nb.models import MODEL_NAMES, build_model, count_parameters

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
# Device, peaks


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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


# ----------------------------------------------------------------------------------------------------------
# Inputs and the training step


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


def _normalize(images: torch.Tensor) -> torch.Tensor:
    try:
        from vfu_nb.data import normalize_images
    except ImportError:                                   # data.py is optional for this benchmark
        mean = torch.tensor((0.485, 0.456, 0.406), device=images.device).view(3, 1, 1)
        std = torch.tensor((0.229, 0.224, 0.225), device=images.device).view(3, 1, 1)
        return (images.float() / 255.0 - mean) / std
    return normalize_images(images)


def loss_function(model):
    """The real multi-task loss (``vfu_nb.losses``), with landmark weight 0 for unsupervised models.

    Returns (fn(outputs, batch) -> dict with 'total', description). Falls back to a plain CE + BCE + MSE only
    if ``vfu_nb.losses`` cannot be imported.
    """
    try:
        from vfu_nb.losses import LossWeights, multitask_loss
    except ImportError:
        import torch.nn.functional as F

        def fallback(out, batch):
            total = F.cross_entropy(out["category_logits"].float(), batch["category"])
            total = total + F.binary_cross_entropy_with_logits(out["attribute_logits"].float(), batch["attributes"])
            if "landmark_heatmaps" in out and model.landmark_supervised:
                total = total + out["landmark_heatmaps"].float().pow(2).mean()
            return {"total": total}
        return fallback, "fallback CE+BCE+MSE (vfu_nb.losses not importable)"
    weights = LossWeights()
    if not model.landmark_supervised:
        weights = dataclasses.replace(weights, landmark=0.0)

    def fn(out, batch):
        return multitask_loss(out, batch, weights, None)
    return fn, f"vfu_nb.losses.multitask_loss ({weights})"


def make_train_step(model, forward, optimizer, loss_fn, device, amp_dtype, channels_last):
    """One optimisation step on a batch whose ``image`` is uint8; returns the detached total loss."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def step(batch: dict) -> torch.Tensor:
        images = _normalize(batch["image"]).contiguous(memory_format=memory_format)
        with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            outputs = forward(images)
            loss = loss_fn(outputs, batch)["total"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

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


def count_train_flops(model, batch: dict, loss_fn, device, amp_dtype, channels_last: bool) -> float:
    """FLOPs of one forward + backward per image (FlopCounterMode: convs and matmuls; 1 MAC = 2 FLOP)."""
    from torch.utils.flop_counter import FlopCounterMode

    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    images = _normalize(batch["image"]).contiguous(memory_format=memory_format)
    counter = FlopCounterMode(display=False)
    with counter:
        with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            loss = loss_fn(model(images), batch)["total"]
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / images.shape[0]


def cached_input_rate(step, label_batches: list[dict], *, batch_size: int, image_size: int,
                      device: torch.device, n_images: int | None = None, warmup: int = 5, steps: int = 20,
                      windows: int = 3, tmp_dir: str | None = None, seed: int = 0) -> dict:
    """Training rate when images come from a uint8 memmap cache on disk (``vfu_nb.data``'s layout N x S x S x 3).

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

        counter = iter(range(1 << 62))

        def next_batch() -> dict:
            labels = label_batches[next(counter) % len(label_batches)]
            return {**labels, "image": gather()}

        rates, loss = time_windows(step, next_batch, batch_size=batch_size, warmup=warmup, steps=steps,
                                   windows=windows, device=device)
        gather_rates = []
        for _ in range(windows):
            t0 = time.perf_counter()
            for _ in range(steps):
                gather()
            synchronize(device)
            gather_rates.append(steps * batch_size / (time.perf_counter() - t0))
        del cache
    result.update(img_s=statistics.median(rates), window_img_s=rates, loss=loss,
                  gather_img_s=statistics.median(gather_rates))
    return result


# ----------------------------------------------------------------------------------------------------------
# CLI


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vfu_nb.bench train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="mtl", choices=MODEL_NAMES)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--backbone", default="vgg16", choices=["vgg16", "vgg16_bn"])
    p.add_argument("--num-classes", type=int, default=50)
    p.add_argument("--num-attributes", type=int, default=1000)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (compile time is in warm-up)")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"],
                   help="auto: bf16 autocast on CUDA, fp32 on CPU")
    p.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"], help="auto: on for CUDA")
    p.add_argument("--steps", type=int, default=20, help="steps per timed window")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--buffers", type=int, default=4, help="distinct random input batches rotated")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the peak used for the fraction")
    p.add_argument("--no-flops", action="store_true", help="skip the FlopCounterMode pass")
    p.add_argument("--no-cache", action="store_true", help="skip the memmap-cache measurement")
    p.add_argument("--cache-images", type=int, default=None, help="images in the temporary memmap")
    p.add_argument("--cache-dir", default=None, help="where the temporary memmap goes (default: system tmp)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, metavar="PATH", help="also write the numbers as JSON")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        argv = argv[1:]
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    """Run the benchmark described by ``args``; returns the numbers as a dict."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    amp_dtype = torch.bfloat16 if (args.amp == "bf16" or (args.amp == "auto" and cuda)) else None
    channels_last = args.channels_last == "on" or (args.channels_last == "auto" and cuda)
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(args.seed)

    model = build_model(args.model, args.num_classes, args.num_attributes, image_size=args.image_size,
                        width=args.width, backbone=args.backbone).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, **({"fused": True} if cuda else {}))
    loss_fn, loss_desc = loss_function(model)
    batches = random_batches(max(1, args.buffers), args.batch_size, args.image_size, args.num_classes,
                             args.num_attributes, device, args.seed)

    result = {
        "model": args.model, "image_size": args.image_size, "width": args.width, "backbone": args.backbone,
        "batch_size": args.batch_size, "num_classes": args.num_classes, "num_attributes": args.num_attributes,
        "device": str(device), "device_name": device_name(device), "torch": torch.__version__,
        "dtype": "bf16 autocast" if amp_dtype else "fp32", "channels_last": channels_last,
        "compile": bool(args.compile), "parameters": count_parameters(model), "loss": loss_desc,
        "steps": args.steps, "warmup": args.warmup, "windows": args.windows,
    }

    flops = None
    if not args.no_flops:
        flop_batch = {k: v[: min(args.batch_size, 2)] for k, v in batches[0].items()}
        t0 = time.perf_counter()
        flops = count_train_flops(model, flop_batch, loss_fn, device, amp_dtype, channels_last)
        result["train_gflop_per_image"] = flops / 1e9
        result["flop_count_seconds"] = time.perf_counter() - t0

    forward = torch.compile(model, dynamic=False) if args.compile else model
    step = make_train_step(model, forward, optimizer, loss_fn, device, amp_dtype, channels_last)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    counter = iter(range(1 << 62))
    rates, loss = time_windows(step, lambda: batches[next(counter) % len(batches)], batch_size=args.batch_size,
                               warmup=args.warmup, steps=args.steps, windows=args.windows, device=device)
    result.update(img_s=statistics.median(rates), window_img_s=rates, final_loss=loss)
    if cuda:
        result["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30

    peak, peak_source = device_peak(device, args.peak_tflops)
    result.update(peak_tflops=peak, peak_source=peak_source)
    if flops is not None:
        result["achieved_tflops"] = result["img_s"] * flops / 1e12
        if peak:
            result["fraction_of_peak"] = result["achieved_tflops"] / peak

    if not args.no_cache:
        cached = cached_input_rate(step, batches, batch_size=args.batch_size, image_size=args.image_size,
                                   device=device, n_images=args.cache_images, warmup=max(2, args.warmup // 2),
                                   steps=args.steps, windows=max(1, min(args.windows, 3)), tmp_dir=args.cache_dir,
                                   seed=args.seed + 1)
        result["cache"] = cached
        if flops is not None:
            cached["achieved_tflops"] = cached["img_s"] * flops / 1e12
    return result


def format_table(r: dict) -> str:
    """A small aligned two-column table of the numbers in ``r``."""
    rows = [
        ("model", f"{r['model']}  (width {r['width']:g}, {r['backbone']}, {r['image_size']} px, "
                  f"{r['num_classes']} classes, {r['num_attributes']} attributes)"),
        ("device", f"{r['device_name']}  [torch {r['torch']}]"),
        ("parameters", f"{r['parameters'] / 1e6:.2f} M"),
        ("step", f"batch {r['batch_size']}, {r['dtype']}, {'channels_last' if r['channels_last'] else 'NCHW'}, "
                 f"{'torch.compile' if r['compile'] else 'eager'}, Adam"),
        ("loss", r["loss"]),
    ]
    if "train_gflop_per_image" in r:
        rows.append(("train GFLOP / image", f"{r['train_gflop_per_image']:.3f}  (FlopCounterMode, fwd+bwd)"))
    w = r["window_img_s"]
    rows.append(("synthetic img/s", f"{r['img_s']:.1f}  (median of {len(w)} windows x {r['steps']} steps after "
                                    f"{r['warmup']} warm-up; min {min(w):.1f}, max {max(w):.1f})"))
    if "achieved_tflops" in r:
        rows.append(("achieved TFLOP/s", f"{r['achieved_tflops']:.4g}"))
    if r.get("peak_tflops"):
        rows.append(("peak TFLOP/s", f"{r['peak_tflops']:.4g}  ({r['peak_source']})"))
    else:
        rows.append(("peak TFLOP/s", f"unknown ({r['peak_source']})"))
    if "fraction_of_peak" in r:
        rows.append(("fraction of peak", f"{100 * r['fraction_of_peak']:.1f} %"))
    if "max_memory_gib" in r:
        rows.append(("max memory", f"{r['max_memory_gib']:.2f} GiB"))
    rows.append(("final loss", f"{r['final_loss']:.4f}"))
    if "cache" in r:
        c = r["cache"]
        extra = f", {c['achieved_tflops']:.4g} TFLOP/s" if "achieved_tflops" in c else ""
        rows.append(("memmap-cache img/s", f"{c['img_s']:.1f}  ({c['n_images']} x {r['image_size']}^2 "
                                           f"{c['layout']}{extra}; {100 * c['img_s'] / r['img_s']:.0f}% of synthetic)"))
        rows.append(("cache gather img/s", f"{c['gather_img_s']:.1f}  (memmap[idx] + pin + copy, no step)"))
    key_width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{key_width}}  {v}" for k, v in rows)


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = run(args)
    print(format_table(result), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
