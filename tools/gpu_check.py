"""One-shot check of the CUDA path on a GPU machine (reference: docs/gpu.md).

    OUT=/some/dir bash tools/gpu_check.sh                 # the GPU machine: every stage, under 8 minutes
    python tools/gpu_check.py --out DIR --dry-run         # CPU: a tiny tree; stages that need CUDA are skipped

The driver runs each stage in its own process group under a hard wall-clock guard, and all of them within
``--budget`` seconds, so a stage that fails, hangs or kills its interpreter is recorded and the next one
runs. A stage writes ``OUT/<stage>.json`` as it goes (partial results survive a timeout); the driver adds
status and seconds and rewrites ``OUT/summary.json`` after every stage. Stages run in order of what they
tell (the trainer before the compile benchmarks), each under its number from docs/gpu.md:

1 environment, 2 synthetic tree, 3 sync audit, 4a bench train eager, 5 bench data, 6 train + resume + predict,
7 train with --compile, 4b bench train --compile, 4c bench train --cuda-graphs, 8 DDP.

Needs only what the trainer needs (torch, torchvision, numpy, PIL); without tqdm a stand-in is put on the path.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = ("mtl", "cat")


@dataclass(frozen=True)
class Profile:
    """The sizes of one kind of check: ``gpu`` (the real one) or ``dry`` (CPU, seconds)."""

    images: int           # synthetic tree size (70/15/15 split)
    image_size: int
    width: float
    train_batch: int      # the train split (1,400 or 61 images) is not a multiple of it: a partial last batch
    audit_batch: int
    bench_steps: int      # bench train: steps per window, windows, warm-up steps
    bench_windows: int
    bench_warmup: int
    data_repeats: int     # bench data
    data_seconds: float
    budget: float         # seconds for all stages together
    threads: int | None   # torch threads of the training runs (None: torch's default)


PROFILES = {
    "gpu": Profile(images=2000, image_size=224, width=1.0, train_batch=48, audit_batch=8, bench_steps=20,
                   bench_windows=5, bench_warmup=10, data_repeats=3, data_seconds=0.5, budget=450.0, threads=None),
    "dry": Profile(images=86, image_size=32, width=0.125, train_batch=8, audit_batch=4, bench_steps=2,
                   bench_windows=1, bench_warmup=1, data_repeats=1, data_seconds=0.1, budget=300.0, threads=1),
}

# runs.predict against the trainer's evaluation: the tolerance is runs.metrics_tolerance (0 on a CPU in fp32,
# larger under TF32/bf16), and a rate tolerance is never below 2 images of the split (the dry run's test has 12).
COMPARED = ("category_top1", "category_top3", "category_top5", "attr_top3_texture", "attr_top3_fabric",
            "attr_top3_shape", "attr_top3_part", "attr_top3_style", "attr_top3_all_grouped", "attr_top3_all_strict",
            "landmark_ne_mean")


@dataclass
class Stage:
    name: str
    guard: float           # hard wall-clock limit (seconds)
    needs_cuda: bool
    needs_tree: bool
    what: str


STAGES = [
    Stage("1_environment", 45, False, False, "torch / torchvision / CUDA versions, device, memory, cores"),
    Stage("2_synthetic_tree", 90, False, False, "python -m vfu_nb.data.synthetic --n 2000 --seed 0"),
    Stage("3_sync_audit", 90, True, True, "set_sync_debug_mode('error') around one training step, mtl and cat"),
    Stage("4a_bench_train_eager", 90, True, True, "bench train, eager, batch 8 and 64; memmap and batch loader "
                                                  "inputs"),
    Stage("5_bench_data", 75, True, True, "bench data with the CUDA rows (batch loader +- augmentation)"),
    Stage("6_train_resume_predict", 120, False, True, "2 epochs mtl, resume to 3, runs.predict vs metrics.json"),
    Stage("7_train_compile", 120, True, True, "1 epoch mtl with --compile: compile time, recompiles"),
    Stage("4b_bench_train_compile", 150, True, False, "bench train --compile, batch 64 then 8"),
    Stage("4c_bench_train_cuda_graphs", 100, True, False, "bench train --cuda-graphs, batch 8"),
    Stage("8_ddp", 90, True, True, "torchrun --nproc_per_node 2 (only with more than one GPU)"),
]


# ----------------------------------------------------------------------------------------------------------
# Small helpers shared by the driver and the stages


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def run_command(cmd: list, log: Path, timeout: float, env: dict | None = None) -> dict:
    """Run ``cmd`` in its own process group, output appended to ``log``; kill the group after ``timeout``."""
    t0 = time.perf_counter()
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(map(str, cmd))}\n")
        out.flush()
        proc = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, timeout))
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc, timed_out = proc.wait(), True
    return {"rc": rc, "timed_out": timed_out, "seconds": round(time.perf_counter() - t0, 2)}


def load_bench():
    """tools/bench.py as a module (whether this file runs as a script or is loaded by a test)."""
    import importlib.util

    if "vfu_bench" not in sys.modules:
        spec = importlib.util.spec_from_file_location("vfu_bench", REPO / "tools" / "bench.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["vfu_bench"] = module
    return sys.modules["vfu_bench"]


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-chars:]
    except OSError:
        return ""


TQDM_STAND_IN = '''"""Stand-in for tqdm where it is not installed (written by tools/gpu_check.py): no bars."""


class tqdm:
    def __init__(self, iterable=None, *args, total=None, **kwargs):
        self.iterable, self.total, self.n = iterable, total, 0

    def __iter__(self):
        return iter(self.iterable)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        self.n += n

    def set_postfix(self, *args, **kwargs):
        pass

    def close(self):
        pass

    @staticmethod
    def write(line, *args, **kwargs):
        print(line)
'''


def stage_env(work: Path) -> dict:
    """The environment of the stage processes: the repository (and a tqdm stand-in if needed) on the path."""
    env = dict(os.environ)
    paths = [str(REPO)]
    try:
        import tqdm  # noqa: F401
    except ImportError:
        shim = work / "shims"
        (shim / "tqdm").mkdir(parents=True, exist_ok=True)
        (shim / "tqdm" / "__init__.py").write_text(TQDM_STAND_IN)
        (shim / "tqdm" / "auto.py").write_text("from tqdm import tqdm  # noqa: F401\n")
        paths.append(str(shim))
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    from vfu_nb.threads import shared_cpu_env

    return shared_cpu_env(env)


# ----------------------------------------------------------------------------------------------------------
# The stages (each runs in its own process: ``gpu_check.py --stage NAME``)


class Context:
    """What a stage gets: the profile, the folders, and ``save`` for (partial) results."""

    def __init__(self, args):
        self.profile = PROFILES["dry" if args.dry_run else "gpu"]
        self.dry_run = args.dry_run
        self.out, self.work = Path(args.out), Path(args.work)
        self.tree, self.cache = self.work / "tree", self.work / "cache"
        self.name = args.stage
        self.result: dict = {}
        self.log = self.out / f"{self.name}.log"

    def save(self, **values) -> None:
        self.result.update(values)
        write_json(self.out / f"{self.name}.json", self.result)

    @property
    def device(self) -> str:
        import torch

        return "cuda" if torch.cuda.is_available() and not self.dry_run else "cpu"

    def train_args(self, run_dir: Path, **over) -> list:
        p = self.profile
        opts = {"--model": "mtl", "--data-root": self.tree, "--run-dir": run_dir, "--cache-dir": self.cache,
                "--image-size": p.image_size, "--width": p.width, "--batch-size": p.train_batch, "--epochs": 2,
                "--device": self.device, "--loader": "batch"}
        if p.threads:
            opts["--threads"] = p.threads
        opts.update({k: v for k, v in over.items() if v is not None})
        return [str(x) for kv in opts.items() for x in kv] + ["--bf16", "--channels-last", "--no-progress"]


def run_environment(ctx: Context) -> None:
    import platform

    import torch
    import torchvision

    info = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "cuda_build": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "cuda_available": torch.cuda.is_available(), "device_count": torch.cuda.device_count(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "dry_run": ctx.dry_run,
            "profile": asdict(ctx.profile)}
    try:
        meminfo = Path("/proc/meminfo").read_text().split("\n")
        info["host_memory_gib"] = round(int(meminfo[0].split()[1]) / 2 ** 20, 1)
    except (OSError, ValueError, IndexError):
        info["host_memory_gib"] = None
    info["tmp_free_gib"] = round(shutil.disk_usage(ctx.work).free / 2 ** 30, 1)
    info["devices"] = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        info["devices"].append({"name": props.name, "memory_gib": round(props.total_memory / 2 ** 30, 1),
                                "capability": f"{props.major}.{props.minor}",
                                "multiprocessors": props.multi_processor_count})
    for module in ("numpy", "PIL", "tqdm", "yaml", "scipy", "sklearn", "triton"):
        try:
            info[f"has_{module}"] = __import__(module).__dict__.get("__version__", "yes")
        except ImportError:
            info[f"has_{module}"] = False
    if shutil.which("nvidia-smi"):
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,memory.used,"
                                  "utilization.gpu,clocks.max.sm,power.limit", "--format=csv"],
                                 capture_output=True, text=True, timeout=20)
            info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        except subprocess.TimeoutExpired:
            info["nvidia_smi"] = "no answer within 20 s"
    ctx.save(**info)


def run_synthetic_tree(ctx: Context) -> None:
    if ctx.tree.exists():
        shutil.rmtree(ctx.tree)
    r = run_command([sys.executable, "-m", "vfu_nb.data.synthetic", "--out", ctx.tree, "--n", ctx.profile.images,
                     "--seed", 0, "--quiet"], ctx.log, timeout=3600)
    summary = read_json(ctx.tree / "synthetic.json")
    ctx.save(command=r, images=summary.get("n"), splits=summary.get("splits"), bytes=summary.get("bytes"),
             categories=len(summary.get("categories", {})))
    if r["rc"] != 0 or not summary:
        raise RuntimeError(f"vfu_nb.data.synthetic failed (rc {r['rc']}); see {ctx.log.name}")


def audit_model(ctx: Context, model_name: str, steps_warmup: int = 3) -> dict:
    """Warm up the trainer's step on batch-loader batches, then: every syncing call of one step (warn mode),
    one step under ``set_sync_debug_mode("error")``, and the syncs of fetching one batch (warn mode)."""
    import warnings

    import torch

    from vfu_nb.data.dataset import DeepFashionC
    from vfu_nb.training.builders import EpochBatchLoader, EpochBatchSampler, build_model_and_loss
    from vfu_nb.training.config import TrainConfig
    from vfu_nb.training.loop import training_step
    from vfu_nb.training.runtime import process_settings, setup_runtime

    p = ctx.profile
    config = TrainConfig(model=model_name, data_root=str(ctx.tree), run_dir=str(ctx.work / "audit"),
                         image_size=p.image_size, width=p.width, batch_size=p.audit_batch, device=ctx.device,
                         bf16=True, channels_last=True, progress=False, threads=p.threads)
    with process_settings():
        rt = setup_runtime(config, 1, 0, 0)
        ds = DeepFashionC(config.data_root, "train", p.image_size, augment=True, cache=True, uint8=True,
                          cache_dir=str(ctx.cache), progress=False)
        model, _, _, loss_fn = build_model_and_loss(config, rt, ds.annotations)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, **({"fused": True} if rt.fused_adam else {}))
        # no prefetch thread: nothing but the audited call runs while sync debug mode is on
        loader = EpochBatchLoader(ds, EpochBatchSampler(len(ds), p.audit_batch, seed=0), rt.device,
                                  augment=True, generator=torch.Generator().manual_seed(0), prefetch=0)
        it = iter(loader)
        cuda = rt.is_cuda
        sync = torch.cuda.synchronize if cuda else (lambda: None)

        def step(batch):
            return training_step(model, optimizer, batch, loss_fn, rt)

        def calls_that_sync(fn) -> tuple:
            """(result, [call sites that synchronised]) with sync debug mode "warn" (CUDA only)."""
            if not cuda:
                return fn(), []
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    out = fn()
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            sites = sorted({f"{Path(w.filename).name}:{w.lineno}: {str(w.message).splitlines()[0]}"
                            for w in caught if "synchroniz" in str(w.message)})
            return out, sites

        t0 = time.perf_counter()
        for _ in range(steps_warmup):
            step(next(it))
        sync()
        warmup_s = time.perf_counter() - t0
        batch = next_ready(it, sync)
        _, step_syncs = calls_that_sync(lambda: step(batch))
        sync()
        batch = next_ready(it, sync)
        error = None
        if cuda:
            torch.cuda.set_sync_debug_mode("error")
        try:
            logged = step(batch)
        except RuntimeError as exc:
            frames = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in traceback.extract_tb(exc.__traceback__)]
            error, logged = {"message": str(exc).splitlines()[0], "frames": frames[-6:]}, None
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
        sync()
        _, loader_syncs = calls_that_sync(lambda: next(it))
        it.close()
        return {"error_mode": "passed" if error is None and cuda else ("not run: no CUDA" if not cuda else "failed"),
                "error": error, "step_sync_sites": step_syncs, "loader_sync_sites": loader_syncs,
                "losses": None if logged is None else [float(v) for v in logged.cpu()],
                "warmup_seconds": round(warmup_s, 2), "batch": p.audit_batch, "device": str(rt.device)}


def next_ready(it, sync) -> dict:
    """The next batch, with the device idle afterwards (so the audited step alone is measured)."""
    batch = next(it)
    sync()
    return batch


def run_sync_audit(ctx: Context) -> None:
    failures = []
    for model_name in MODELS:
        r = audit_model(ctx, model_name)
        ctx.save(**{model_name: r})
        if r["error_mode"] == "failed" or r["step_sync_sites"]:
            failures.append(model_name)
    ctx.save(passed=not failures)
    if failures:
        raise AssertionError(f"a training step synchronises with the host: {', '.join(failures)} (see the sites)")


def bench_train_argv(ctx: Context, model_name: str, batch_sizes, inputs: str, *, compile_mode: str | None = None,
                     json_path: Path | None = None) -> list:
    """Arguments of ``python -m tools.bench train`` for one model at bf16 and channels_last.

    ``inputs``: ``"memmap"`` (random inputs, then the uint8 memmap gather; DeepFashion-C's 50 classes and 1,000
    attributes), ``"random"`` (random inputs only) or ``"loader"`` (random inputs, then the batch loader with
    augmentation over the synthetic tree, whose class and attribute counts then apply)."""
    p = ctx.profile
    argv = ["train", "--model", model_name, "--image-size", p.image_size, "--width", p.width,
            "--batch-size", *batch_sizes, "--amp", "bf16", "--channels-last", "on", "--device", ctx.device,
            "--steps", p.bench_steps, "--windows", p.bench_windows, "--warmup", p.bench_warmup]
    if inputs != "memmap":
        argv.append("--no-cache")
    if inputs == "loader":
        argv += ["--batch-loader", "--augment", "--root", ctx.tree, "--cache-dir", ctx.cache]
    if compile_mode == "compile":
        argv.append("--compile")
    elif compile_mode == "cuda-graphs":
        argv.append("--cuda-graphs")
    if p.threads:
        argv += ["--threads", p.threads]
    if json_path is not None:
        argv += ["--json", json_path]
    return [str(a) for a in argv]


TARGET_IMG_S = {"mtl": 4000.0, "cat": 4500.0}   # one H100/H200, bf16, 224 px, full width, batch 64


def run_bench(ctx: Context, runs: list, compile_mode: str | None) -> None:
    """``runs``: (model, batch sizes, inputs); one ``bench.main`` call each, in this process, results saved after
    each (a stage stopped by its guard keeps the finished ones)."""
    import torch

    bench = load_bench()

    table = []
    for model_name, sizes, inputs in runs:
        key = f"{model_name}_b{'_'.join(map(str, sizes))}_{inputs}"
        path = ctx.out / "bench" / f"{ctx.name}_{key}.json"
        argv = bench_train_argv(ctx, model_name, sizes, inputs, compile_mode=compile_mode, json_path=path)
        with open(ctx.log, "a") as log:
            log.write(f"\n$ python -m tools.bench {' '.join(argv)}\n")
        t0 = time.perf_counter()
        torch._dynamo.reset()
        result = bench.main(argv)
        for run in result["runs"]:
            row = {"model": model_name, "batch_size": run["batch_size"], "compile": result["compile"],
                   "inputs": inputs, "classes": result["num_classes"], "attributes": result["num_attributes"],
                   "img_s": round(run["img_s"], 1), "fraction_of_peak": run.get("fraction_of_peak"),
                   "host_syncs_per_step": run.get("host_syncs_per_step"),
                   "max_memory_gib": run.get("max_memory_gib"),
                   "batch_loader_img_s": (run.get("batch_loader") or {}).get("img_s"),
                   "batch_loader_host_syncs": (run.get("batch_loader") or {}).get("host_syncs_per_step"),
                   "memmap_img_s": (run.get("cache") or {}).get("img_s")}
            if run["batch_size"] == 64 and inputs != "loader":
                row["target_img_s"] = TARGET_IMG_S[model_name]
                row["meets_target"] = run["img_s"] >= TARGET_IMG_S[model_name]
            if row["batch_loader_img_s"]:
                row["batch_loader_vs_random"] = round(row["batch_loader_img_s"] / run["img_s"], 3)
            table.append(row)
        ctx.save(rows=table, **{key: {"seconds": round(time.perf_counter() - t0, 1), "json": path.name,
                                      "gflop_per_image": result.get("train_gflop_per_image"),
                                      "device_name": result.get("device_name")}})


def run_bench_eager(ctx: Context) -> None:
    run_bench(ctx, [(m, (8, 64), "memmap") for m in MODELS] + [("mtl", (8, 64), "loader")], None)


def run_bench_compile(ctx: Context) -> None:
    run_bench(ctx, [(m, (b,), "random") for b in (64, 8) for m in MODELS], "compile")


def run_bench_cuda_graphs(ctx: Context) -> None:
    run_bench(ctx, [(m, (8,), "random") for m in MODELS], "cuda-graphs")


def run_bench_data(ctx: Context) -> None:
    bench = load_bench()

    p = ctx.profile
    path = ctx.out / "bench" / "5_bench_data.json"
    argv = ["data", "--root", ctx.tree, "--image-size", p.image_size, "--batch-size", 64, "--repeats",
            p.data_repeats, "--seconds", p.data_seconds, "--cache-dir", ctx.cache, "--workers",
            min(8, os.cpu_count() or 1), "--json", path]
    result = bench.main([str(a) for a in argv])
    ctx.save(paths={row["path"]: row["img_s"] for row in result["paths"]}, json=path.name,
             batch_loader_vs_cache_item_0_workers=result["batch_loader_vs_cache_item_0_workers"])


def compare_metrics(reference: dict, got: dict, tolerance: dict) -> dict:
    """Per compared metric: the difference ``got - reference`` and whether it is within ``tolerance``."""
    n = reference.get("n_images") or 1
    tolerance = {**tolerance, "rate": max(tolerance["rate"], 2 / n)}
    out, ok = {}, True
    for key in COMPARED:
        a, b = reference.get(key), got.get(key)
        if a is None or b is None:
            out[key] = {"reference": a, "predict": b, "within": a is None and b is None}
        else:
            limit = tolerance["ne"] if key.startswith("landmark") else tolerance["rate"]
            diff = float(b) - float(a)
            out[key] = {"reference": a, "predict": b, "diff": diff, "within": abs(diff) <= limit}
        ok = ok and out[key]["within"]
    return {"agrees": ok, "tolerance": tolerance, "metrics": out}


def copy_run_files(run_dir: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "metrics.json", "history.json", "train.log"):
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, dest / name)


def run_train_resume_predict(ctx: Context) -> None:
    import torch

    from vfu_nb.training import runs
    from vfu_nb.training.rundir import RunDir

    run_dir = ctx.work / "runs" / "mtl"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    checks = {}
    first = run_command([sys.executable, "-m", "vfu_nb.training", *ctx.train_args(run_dir)], ctx.log, timeout=3600)
    hist = read_json(run_dir / "history.json")
    config = RunDir(run_dir).read_config()
    resolved = config.get("resolved", {})
    epochs = hist.get("epochs", [])
    steps1 = len(hist.get("batches", {}).get("step", []))
    train_images = epochs[0]["train_images"] if epochs else None
    checks["first_run_ok"] = first["rc"] == 0 and len(epochs) == 2
    checks["partial_last_batch"] = bool(train_images) and train_images % ctx.profile.train_batch != 0
    checks["losses_finite"] = all(v == v and abs(v) != float("inf") for v in hist.get("batches", {}).get("total", [0]))
    checks["batch_loader_logged"] = "data path batch loader" in tail(run_dir / "train.log", 100000)
    checks["resolved_as_asked"] = (resolved.get("bf16") is True and resolved.get("channels_last") is True
                                   and resolved.get("num_workers") == 0)
    ctx.save(first=first, steps_after_2_epochs=steps1, train_images=train_images, resolved=resolved,
             epoch_seconds=[e.get("train_seconds") for e in epochs],
             images_per_s=[e.get("images_per_s") for e in epochs], checks=checks)

    again = run_command([sys.executable, "-m", "vfu_nb.training", *ctx.train_args(run_dir, **{"--epochs": 3}),
                         "--resume"], ctx.log, timeout=3600)
    hist3 = read_json(run_dir / "history.json")
    batches3 = hist3.get("batches", {})
    checks["resume_ok"] = again["rc"] == 0 and len(hist3.get("epochs", [])) == 3
    checks["resume_continues_steps"] = (batches3.get("step", [])[:steps1] == hist.get("batches", {}).get("step")
                                        and batches3.get("total", [])[:steps1] == hist.get("batches", {}).get("total")
                                        and len(batches3.get("step", [])) == steps1 * 3 // 2)
    checks["resume_logged"] = "== resume" in tail(run_dir / "train.log", 100000)
    metrics = read_json(run_dir / "metrics.json")
    copy_run_files(run_dir, ctx.out / "runs" / "mtl")
    ctx.save(resume=again, metrics_test=metrics.get("test"), best_epoch=metrics.get("best_epoch"), checks=checks)

    # runs.predict evaluates as the trainer did (the run's recorded bf16 / channels_last and eval batch size)
    predicted = runs.predict(run_dir, "test", "best", device=ctx.device).metrics()
    reference = metrics.get("test") or {}
    tolerance = runs.metrics_tolerance(run_dir, ctx.device)
    agree = {"predict": compare_metrics(reference, predicted, {"rate": tolerance, "ne": tolerance}),
             "precision": RunDir(run_dir).precision()}
    checks["predict_agrees"] = agree["predict"]["agrees"]
    ctx.save(predict=agree, checks=checks, passed=all(checks.values()))
    failed = [k for k, v in checks.items() if not v]
    if failed:
        raise AssertionError(f"checks failed: {', '.join(failed)}")


def run_train_compile(ctx: Context) -> None:
    """One epoch with --compile in this process, so dynamo's counters can be read."""
    import torch
    from torch._dynamo.utils import counters

    from vfu_nb.training.cli import main

    run_dir = ctx.work / "runs" / "mtl_compile"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    argv = ctx.train_args(run_dir, **{"--epochs": 1}) + ["--compile"]
    with open(ctx.log, "a") as log:
        log.write(f"\n$ python -m vfu_nb.training {' '.join(argv)}  (in-process)\n")
    torch._dynamo.reset()
    counters.clear()
    step_times = []
    t0 = time.perf_counter()
    main(argv, on_step=lambda epoch, batch, step: step_times.append(time.perf_counter()))
    total = time.perf_counter() - t0
    gaps = [b - a for a, b in zip(step_times, step_times[1:])]
    typical = sorted(gaps)[len(gaps) // 2] if gaps else 0.0
    hist = read_json(run_dir / "history.json")
    stats = {k: int(v) for k, v in counters["stats"].items()}
    result = {"seconds": round(total, 1), "steps": len(step_times),
              "first_step_seconds": round(step_times[0] - t0, 2) if step_times else None,
              "median_step_seconds": round(typical, 4),
              "compile_seconds_estimate": round(step_times[0] - t0 - typical, 1) if step_times else None,
              "unique_graphs": stats.get("unique_graphs"), "dynamo_stats": stats,
              "recompiles": {k: int(v) for k, v in counters["recompiles"].items()},
              "recompiled": bool(counters["recompiles"]) or stats.get("unique_graphs", 0) > 1,
              "graph_breaks": {k: int(v) for k, v in counters["graph_break"].items()},
              "inductor": {k: int(v) for k, v in counters["inductor"].items() if "cache" in k},
              "train_images": (hist.get("epochs") or [{}])[0].get("train_images"),
              "images_per_s": (hist.get("epochs") or [{}])[0].get("images_per_s")}
    copy_run_files(run_dir, ctx.out / "runs" / "mtl_compile")
    ctx.save(**result, passed=not result["recompiled"])
    if result["recompiled"]:
        raise AssertionError(f"the compiled model recompiled: {result['recompiles']}")


def run_ddp(ctx: Context) -> None:
    import torch

    run_dir = ctx.work / "runs" / "mtl_ddp"
    args = ctx.train_args(run_dir, **{"--epochs": 1, "--batch-size": ctx.profile.train_batch // 2})
    r = run_command([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", 2,
                     "-m", "vfu_nb.training", *args], ctx.log, timeout=3600)
    copy_run_files(run_dir, ctx.out / "runs" / "mtl_ddp")
    metrics = read_json(run_dir / "metrics.json")
    ctx.save(command=r, devices=torch.cuda.device_count(), world_size=metrics.get("timing", {}).get("world_size"),
             test=metrics.get("test"))
    if r["rc"] != 0:
        raise RuntimeError(f"torchrun failed (rc {r['rc']}); see {ctx.log.name}")


RUNNERS = {"1_environment": run_environment, "2_synthetic_tree": run_synthetic_tree, "3_sync_audit": run_sync_audit,
           "4a_bench_train_eager": run_bench_eager, "5_bench_data": run_bench_data,
           "6_train_resume_predict": run_train_resume_predict, "7_train_compile": run_train_compile,
           "4b_bench_train_compile": run_bench_compile, "4c_bench_train_cuda_graphs": run_bench_cuda_graphs,
           "8_ddp": run_ddp}


def run_stage(args) -> int:
    """Child process: run one stage, write its JSON (status ok / failed with the traceback)."""
    ctx = Context(args)
    try:
        RUNNERS[ctx.name](ctx)
    except BaseException as exc:  # recorded, then the driver goes on
        ctx.save(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-4000:])
        print(traceback.format_exc(), file=sys.stderr, flush=True)
        return 1
    ctx.save(status="ok")
    return 0


# ----------------------------------------------------------------------------------------------------------
# The driver


def skip_reason(stage: Stage, env: dict, tree_ok: bool, left: float) -> str | None:
    if not env:
        return "skipped: environment unknown (stage 1 failed)"
    if stage.needs_cuda and not env.get("cuda_available"):
        return "skipped: no CUDA"
    if stage.name == "8_ddp" and env.get("device_count", 0) < 2:
        return f"skipped: {env.get('device_count', 0)} GPU (DDP needs more than one)"
    if stage.needs_tree and not tree_ok:
        return "skipped: no synthetic tree (stage 2 failed)"
    if left < 15:
        return "skipped: time budget spent"
    return None


def drive(args) -> dict:
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    profile = PROFILES["dry" if args.dry_run else "gpu"]
    budget = args.budget or profile.budget
    env = stage_env(work)
    started = time.perf_counter()
    summary = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "dry_run": args.dry_run, "budget_s": budget,
               "out": str(out), "work": str(work), "stages": []}
    environment: dict = {}
    tree_ok = (work / "tree" / "synthetic.json").exists()      # --only without stage 2: an earlier tree
    only = set(args.only or [])
    for stage in STAGES:
        if only and stage.name not in only | {"1_environment"}:
            continue
        left = budget - (time.perf_counter() - started)
        guard = min(stage.guard, left)
        reason = skip_reason(stage, environment, tree_ok, left) if stage.name != "1_environment" else None
        record = {"stage": stage.name, "what": stage.what, "guard_s": round(guard, 1)}
        if reason:
            record.update(status=reason, seconds=0.0)
            write_json(out / f"{stage.name}.json", {"status": reason})
        else:
            (out / f"{stage.name}.json").unlink(missing_ok=True)
            cmd = [sys.executable, Path(__file__).resolve(), "--stage", stage.name, "--out", out, "--work", work]
            r = run_command(cmd + (["--dry-run"] if args.dry_run else []), out / f"{stage.name}.log", guard, env)
            result = read_json(out / f"{stage.name}.json")
            status = result.get("status") or ("failed" if r["rc"] == 0 else f"failed (exit code {r['rc']})")
            if r["timed_out"]:
                status = f"timeout after {guard:.0f} s (hard guard; partial results kept)"
            result["status"] = status
            write_json(out / f"{stage.name}.json", result)
            record.update(status=status, seconds=r["seconds"])
            if status != "ok":
                record["error"] = result.get("error") or tail(out / f"{stage.name}.log", 600)
        if stage.name == "1_environment":
            environment = read_json(out / "1_environment.json")
        if stage.name == "2_synthetic_tree":
            tree_ok = record["status"] == "ok"
        print(f"[gpu_check] {stage.name:<28} {record['status']:<40} {record['seconds']:7.1f} s", flush=True)
        summary["stages"].append(record)
        summary["seconds"] = round(time.perf_counter() - started, 1)
        write_json(out / "summary.json", summary)
    summary["headline"] = headline(out)
    summary["passed"] = all(s["status"] == "ok" or s["status"].startswith("skipped") for s in summary["stages"])
    write_json(out / "summary.json", summary)
    print(json.dumps({"passed": summary["passed"], "seconds": summary["seconds"], **summary["headline"]}, indent=1))
    return summary


def headline(out: Path) -> dict:
    """The numbers docs/gpu.md asks to record, gathered from the stage files."""
    env = read_json(out / "1_environment.json")
    h = {"device": (env.get("devices") or [{}])[0].get("name"), "torch": env.get("torch")}
    for name in ("4a_bench_train_eager", "4b_bench_train_compile", "4c_bench_train_cuda_graphs"):
        for row in read_json(out / f"{name}.json").get("rows", []):
            label = f"{row['model']} b{row['batch_size']} {row['compile'] or 'eager'}"
            if row["inputs"] == "loader":
                h[f"{label} batch loader / random inputs"] = row.get("batch_loader_vs_random")
            else:
                h[f"{label} img/s"] = row["img_s"]
    audit = read_json(out / "3_sync_audit.json")
    if audit:
        h["sync audit passed"] = audit.get("passed")
    train = read_json(out / "6_train_resume_predict.json")
    if train:
        h["train/resume/predict checks"] = train.get("checks")
    compiled = read_json(out / "7_train_compile.json")
    if compiled:
        h["trainer compile s / recompiled"] = [compiled.get("compile_seconds_estimate"), compiled.get("recompiled")]
    return h


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT"), help="results folder (default: $OUT)")
    parser.add_argument("--work", default=None, help="scratch folder for the tree, caches and runs "
                                                     "(default: $TMPDIR/vfu_gpu_check or /tmp/vfu_gpu_check)")
    parser.add_argument("--dry-run", action="store_true", help="CPU check of the script itself: tiny tree, "
                                                               "32 px; stages that need CUDA are skipped")
    parser.add_argument("--budget", type=float, default=None, help="seconds for all stages (default: 450, dry "
                                                                   "run 300)")
    parser.add_argument("--only", nargs="+", choices=[s.name for s in STAGES], help="run only these stages")
    parser.add_argument("--stage", choices=sorted(RUNNERS), help=argparse.SUPPRESS)   # a child process
    args = parser.parse_args(argv)
    if not args.out:
        parser.error("--out DIR (or $OUT) is required")
    args.work = args.work or os.path.join(os.environ.get("TMPDIR") or "/tmp", "vfu_gpu_check")
    if args.stage:
        return run_stage(args)
    return 0 if drive(args)["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
