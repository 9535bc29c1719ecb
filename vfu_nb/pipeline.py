"""Run the numbered notebook series headless with papermill: ``python -m vfu_nb.pipeline --profile P``.

Each notebook is executed with kernel ``python3`` and cwd ``notebooks/``; executed copies and each
notebook's ``metrics.json`` land in ``runs/<profile>/``. Run directories are passed between notebooks as
parameters. A failing cell stops the pipeline with a non-zero exit naming the notebook and the cell, and
the executed notebook with the error is kept for inspection. Unknown parameters are refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"

# Parameters per profile; every notebook also gets out_dir and figures_dir from the runner.
PROFILES = {
    "smoke": {"common": {}, "figures_in_repo": False},
    "default": {"common": {}, "figures_in_repo": True},
    "full": {"common": {}, "figures_in_repo": False},
}
STEPS = ["01_explore_data"]


class PipelineError(RuntimeError):
    """A notebook failed; the message names the notebook, the cell and the executed copy."""


def notebook_parameters(path: Path) -> set[str]:
    import papermill as pm
    return set(pm.inspect_notebook(str(path)))


def step_parameters(step: str, profile: str, run_dir: Path, data_root: str | None, device: str | None,
                    figures_dir: Path) -> dict:
    """Parameters passed to one notebook: profile values, data root, device and the run directories."""
    params = dict(PROFILES[profile]["common"])
    params.update(PROFILES[profile].get(step, {}))
    params["out_dir"] = str(run_dir / step)
    params["figures_dir"] = str(figures_dir)
    if data_root:
        params["data_root"] = str(Path(data_root).resolve())
    if device:
        params["device"] = device
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
        raise PipelineError(f"{source.name}: cell {err.exec_count} failed with {err.ename}: {err.evalue}\n"
                            f"  executed notebook with the error: {target}") from None
    metrics = Path(params["out_dir"]) / "metrics.json"
    return json.loads(metrics.read_text()) if metrics.exists() else {}


def run_pipeline(profile: str = "smoke", data_root: str | None = None, device: str | None = None,
                 run_dir=None, steps=None, figures_dir=None, log_output: bool = True) -> dict:
    """Run ``steps`` (default: the whole series) under ``profile``; return {step: metrics}."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    run_dir = Path(run_dir or REPO / "runs" / profile).resolve()
    figures_dir = Path(figures_dir or (REPO / "figures" if PROFILES[profile]["figures_in_repo"]
                                       else run_dir / "figures")).resolve()
    results, timings = {}, {}
    for step in steps or STEPS:
        params = step_parameters(step, profile, run_dir, data_root, device, figures_dir)
        print(f"[pipeline] {step} ({profile})", flush=True)
        t0 = time.perf_counter()
        results[step] = run_notebook(step, params, run_dir, log_output)
        timings[step] = round(time.perf_counter() - t0, 1)
        print(f"[pipeline] {step} done in {timings[step]:.0f} s", flush=True)
    summary = {"profile": profile, "seconds": timings, "metrics": results}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
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
    try:
        run_pipeline(args.profile, args.data_root, args.device, args.run_dir, args.steps)
    except PipelineError as err:
        print(f"[pipeline] FAILED: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
