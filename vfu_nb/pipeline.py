"""Run the numbered notebook series headless with papermill: ``python -m vfu_nb.pipeline --profile P``.

    python -m vfu_nb.pipeline --profile smoke|default|study|full [--data-root DIR] [--device cuda]
                              [--run-dir DIR] [--steps 02_train_mtl ...]

Each notebook is executed with kernel ``python3`` and cwd ``notebooks/``; executed copies and each
notebook's ``metrics.json`` land in ``runs/<profile>/`` (``summary.json`` collects them with the wall time of
each notebook). Run directories are passed between notebooks as parameters: 02 and 03 train into
``runs/<profile>/02_train_mtl/run`` and ``.../03_train_cat/run``, 04 and 05 get both as ``mtl_run`` and
``cat_run``, 06 keeps its grid in ``runs/<profile>/06_controls_and_seeds/study``. Figures go to ``figures/``
for the default profile (the ones the README shows) and to ``runs/<profile>/figures`` otherwise.

Profiles (details at ``PROFILES``): ``smoke`` (the notebooks' defaults, seconds each, for tests), ``default``
(``make run``: 01-05 on the synthetic benchmark, ~9 min on 2 CPU cores), ``study`` (06 alone: five models x three
seeds, ~1 h on 2 cores), ``full`` (the thesis configuration for a GPU and the real DeepFashion-C).

Re-running a profile resumes: finished runs are read back, interrupted ones continue from their last epoch.
A failing cell stops the pipeline with a non-zero exit naming the notebook and the cell, and the executed
notebook with the error is kept for inspection. Unknown parameters are refused.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"

STEPS = ["01_explore_data", "02_train_mtl", "03_train_cat", "04_compare_mtl_cat", "05_attention_maps",
         "06_controls_and_seeds"]
TRAIN_STEPS = ("02_train_mtl", "03_train_cat")

# --- what each profile trains -------------------------------------------------------------------------------
# smoke: the notebooks' own defaults (32 px, width 0.125, 64 images per split, 2 epochs): seconds per notebook.
# default (`make run`): notebooks 01-05 on the 4,000-image synthetic benchmark (2,800 train / 600 val / 600
#   test); measured 8.5 min on 2 mostly idle cores (02: 10 epochs of ~21 s, 03: ~15 s each) plus 0.5 min of data
#   generation, inside the 15-minute budget. 64 px crops at width 0.25 (VGG-16 topology with a quarter of the
#   channels): at 32 px neither model left the class-prior plateau (top-3 0.447) within 5 epochs; at 64 px both
#   do within 2-4 epochs. Batch 8 (the thesis' value): on a CPU the cost per image hardly depends on the batch
#   size (mtl 64 px: 10.8 ms/img at batch 8, 9.5 at batch 32), so small batches buy 4x the optimiser steps for
#   the same time, and the plateau is left after a number of steps. Adam lr 1e-4 and 10 epochs, as in the thesis.
# study: notebook 06 alone with train_missing: trains whatever results/plan.yaml still lacks (hours on 2 cores,
#   resumable), then shows the report; it does not fit the 15-minute budget of `make run`.
# full: the thesis configuration for a GPU and the real DeepFashion-C (--data-root): 224 px, full-width VGG-16,
#   batch 8, 10 epochs, lr 1e-4, ImageNet weights when torchvision's file is present.
DEFAULT_TRAIN = {"epochs": 10, "batch_size": 8, "lr": 1e-4, "image_size": 64, "width": 0.25, "max_items": None}
DEFAULT_STUDY = {"plan": "results/plan.yaml", "train_missing": True, "jobs": 2}
FULL_TRAIN = {"epochs": 10, "batch_size": 8, "lr": 1e-4, "image_size": 224, "width": 1.0, "backbone": "vgg16",
              "pretrained": "torchvision", "max_items": None, "device": "auto"}
FULL_STUDY = {"plan": "results/full/plan.yaml", "train_missing": True, "jobs": 1}

# Parameters per profile and notebook; every notebook also gets out_dir and figures_dir, and, where it declares
# them, data_root, device and the run directories of the notebooks before it (see step_parameters).
PROFILES = {
    "smoke": {"common": {}, "figures_in_repo": False, "steps": STEPS},
    "default": {"common": {}, "figures_in_repo": True, "steps": STEPS[:5],
                "02_train_mtl": DEFAULT_TRAIN, "03_train_cat": DEFAULT_TRAIN},
    "study": {"common": {}, "figures_in_repo": False, "steps": ["06_controls_and_seeds"],
              "06_controls_and_seeds": DEFAULT_STUDY},
    "full": {"common": {}, "figures_in_repo": False, "steps": STEPS,
             "02_train_mtl": FULL_TRAIN, "03_train_cat": FULL_TRAIN, "06_controls_and_seeds": FULL_STUDY,
             "04_compare_mtl_cat": {"device": "auto"}, "05_attention_maps": {"device": "auto"}},
}


class PipelineError(RuntimeError):
    """A notebook failed; the message names the notebook, the cell and the executed copy."""


def notebook_parameters(path: Path) -> set[str]:
    import papermill as pm
    return set(pm.inspect_notebook(str(path)))


def _resolve_pretrained(value):
    """"torchvision" only when torchvision's VGG-16 file is on disk (nothing is downloaded); else None, with a note."""
    if value != "torchvision":
        return value
    from vfu_nb.models import pretrained_path

    try:
        pretrained_path("torchvision")
    except FileNotFoundError as err:
        print(f"[pipeline] note: no ImageNet VGG-16 weights, training from scratch (pretrained=None). "
              f"{str(err).splitlines()[0]}", flush=True)
        return None
    return value


def step_parameters(step: str, profile: str, run_dir: Path, data_root: str | None, device: str | None,
                    figures_dir: Path, accepted: set | None = None) -> dict:
    """Parameters passed to one notebook: profile values, data root, device and the run directories.

    ``accepted`` (the notebook's declared parameters) limits the *wired* values (data_root, device, run
    directories) to notebooks that take them; profile values are always passed, so a typo is refused.
    """
    params = dict(PROFILES[profile]["common"])
    params.update(PROFILES[profile].get(step, {}))
    if "pretrained" in params:
        params["pretrained"] = _resolve_pretrained(params["pretrained"])
    params["out_dir"] = str(run_dir / step)
    params["figures_dir"] = str(figures_dir)
    wired = {
        "run_dir": str(run_dir / step / "run") if step in TRAIN_STEPS else None,
        "mtl_run": str(run_dir / "02_train_mtl" / "run"),
        "cat_run": str(run_dir / "03_train_cat" / "run"),
        "data_root": str(Path(data_root).resolve()) if data_root else None,
        "device": device,
    }
    for name, value in wired.items():
        if value is not None and (accepted is None or name in accepted):
            params[name] = value
    return params


def run_notebook(step: str, params: dict, run_dir: Path, log_output: bool = True) -> dict:
    """Execute one notebook; return its metrics.json (or {}), raising PipelineError on a failed cell."""
    import papermill as pm

    source = NOTEBOOKS / f"{step}.ipynb"
    known = notebook_parameters(source)
    unknown = sorted(set(params) - known)
    if unknown:
        raise PipelineError(f"{source.name}: unknown parameters {unknown}; it accepts {sorted(known)}")
    target = run_dir / "notebooks" / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        pm.execute_notebook(str(source), str(target), parameters=params, kernel_name="python3",
                            cwd=str(NOTEBOOKS), progress_bar=False, log_output=log_output)
    except pm.PapermillExecutionError as err:
        first = next((line for line in str(err.source).splitlines() if line.strip()), "")
        raise PipelineError(f"{source.name}: cell {err.exec_count} failed with {err.ename}: {err.evalue}\n"
                            f"  the cell (In [{err.exec_count}] of the executed notebook) starts: {first}\n"
                            f"  executed notebook with the error: {target}") from None
    metrics = Path(params["out_dir"]) / "metrics.json"
    return json.loads(metrics.read_text()) if metrics.exists() else {}


def run_pipeline(profile: str = "smoke", data_root: str | None = None, device: str | None = None,
                 run_dir=None, steps=None, figures_dir=None, log_output: bool = True) -> dict:
    """Run ``steps`` (default: the whole series) under ``profile``; return {step: metrics}."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    run_dir = Path(run_dir or REPO / "runs" / profile).resolve()
    # kernels import vfu_nb from this checkout even when it is not pip-installed
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    # Kernels inherit this: torch's OpenMP threads (libgomp) spin only briefly before sleeping. With the default
    # spin time a second busy process on the 2-core machine slows training many-fold (measured on a 400-image
    # 64 px epoch: 26 s instead of 12 s next to another torch job, and up to 228 s vs 11 s earlier, next to
    # other jobs); OMP_WAIT_POLICY=PASSIVE fixes that too but costs 43% when the machine is idle, this 4%.
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")
    figures_dir = Path(figures_dir or (REPO / "figures" if PROFILES[profile]["figures_in_repo"]
                                       else run_dir / "figures")).resolve()
    results, timings = {}, {}
    for step in steps or PROFILES[profile]["steps"]:
        params = step_parameters(step, profile, run_dir, data_root, device, figures_dir,
                                 notebook_parameters(NOTEBOOKS / f"{step}.ipynb"))
        print(f"[pipeline] {step} ({profile})", flush=True)
        t0 = time.perf_counter()
        results[step] = run_notebook(step, params, run_dir, log_output)
        timings[step] = round(time.perf_counter() - t0, 1)
        print(f"[pipeline] {step} done in {timings[step]:.0f} s", flush=True)
        summary = {"profile": profile, "seconds": timings, "metrics": results}
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print("[pipeline] wall time per notebook: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
          + f"; total {sum(timings.values()):.0f} s", flush=True)
    if "06_controls_and_seeds" not in timings and profile == "default":
        print("[pipeline] notebook 06 (seeds and controls) is not part of `make run`: it shows the committed "
              "study in results/; python -m vfu_nb.pipeline --profile study trains what it lacks", flush=True)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vfu_nb.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="smoke")
    parser.add_argument("--data-root", help="DeepFashion-C folder (default: the synthetic benchmark)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: the notebooks' own)")
    parser.add_argument("--run-dir", help="where executed notebooks and metrics go (default runs/<profile>)")
    parser.add_argument("--steps", nargs="+", choices=STEPS, help="run only these notebooks")
    args = parser.parse_args(argv)
    # papermill logs each cell's output (the per-epoch lines of training) at INFO level
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("papermill").setLevel(logging.INFO)
    try:
        run_pipeline(args.profile, args.data_root, args.device, args.run_dir, args.steps)
    except PipelineError as err:
        print(f"[pipeline] FAILED: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
