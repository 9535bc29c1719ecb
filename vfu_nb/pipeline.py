"""Run the notebook series headless with papermill, configured by a profile file and overrides.

    python -m vfu_nb.pipeline                                    # profiles/default.yaml: what `make run` runs
    python -m vfu_nb.pipeline --profile smoke                    # the notebooks' own defaults, seconds each
    python -m vfu_nb.pipeline -p epochs 3 -p 02_train_cat.lr 1e-3
    python -m vfu_nb.pipeline --profile full -p data_root /data/DeepFashion -p device cuda
    python -m vfu_nb.pipeline -f my_settings.yaml --steps 02_train_mtl 02_train_cat --dry-run

A step is one execution of a notebook. The training notebook runs once per model (the papermill way):

    01_explore_data        notebooks/01_explore_data.ipynb
    02_train_mtl           notebooks/02_train.ipynb with model=mtl
    02_train_cat           notebooks/02_train.ipynb with model=cat
    03_compare_mtl_cat     notebooks/03_compare_mtl_cat.ipynb, given both runs
    04_attention_maps      notebooks/04_attention_maps.ipynb, given both runs
    05_controls_and_seeds  notebooks/05_controls_and_seeds.ipynb

Parameters, later ones winning: each notebook's own defaults (its ``parameters`` cell); the folders the pipeline
wires (``out_dir`` = ``runs/<profile>/<step>``, ``figures_dir`` = ``runs/<profile>/figures``, the run
directories of 02 handed to 03 and 04, ``progress=False``); the profile (``profiles/<name>.yaml`` or any YAML
file); ``-f FILE.yaml`` files in order; ``-p NAME VALUE`` in order (VALUE is parsed as YAML: ``3``, ``1e-3``,
``null``, ``true``, ``[1, 2]``). ``NAME`` goes to every notebook that declares it, ``STEP.NAME`` to one step
(``02_train_cat.lr``) and ``NOTEBOOK.NAME`` to every execution of one notebook (``02_train.epochs``); in YAML a
step or notebook name may also head a mapping of its parameters. The training notebook takes every
:class:`vfu_nb.training.config.TrainConfig` field: those its parameters cell does not name reach it in its
``settings`` mapping, so papermill never warns of an unknown parameter. A name no notebook declares is refused
before anything runs.

Each step writes ``runs/<profile>/<step>/``: the executed notebook ``<step>.ipynb``, its ``metrics.json`` and, for
02, the run directory ``run/``; ``runs/<profile>/summary.json`` collects every step's parameters, metrics and wall
time. Re-running a profile resumes: finished runs are read back, interrupted ones continue from their last epoch.
A failing cell stops the pipeline with exit code 1 naming the notebook and the cell; the executed notebook with
the error is kept. Relative paths (``data_root``, ``figures_dir``) are taken from the repository root.
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import logging
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from vfu_nb.paths import repo_root, resolve
from vfu_nb.threads import shared_cpu_env

REPO = repo_root()
NOTEBOOKS = REPO / "notebooks"
PROFILES_DIR = REPO / "profiles"

#: step -> (notebook, parameters that make the step what it is).
STEPS = {
    "01_explore_data": ("01_explore_data", {}),
    "02_train_mtl": ("02_train", {"model": "mtl"}),
    "02_train_cat": ("02_train", {"model": "cat"}),
    "03_compare_mtl_cat": ("03_compare_mtl_cat", {}),
    "04_attention_maps": ("04_attention_maps", {}),
    "05_controls_and_seeds": ("05_controls_and_seeds", {}),
}
#: The notebook that passes every TrainConfig field to the trainer (vfu_nb.training.runs.train_settings).
TRAINING_NOTEBOOK = "02_train"
#: Profile keys that are not notebook parameters.
PROFILE_KEYS = ("description", "steps", "together")


class PipelineError(RuntimeError):
    """A profile or override is wrong, or a notebook failed; the message says which and where."""


class _YAMLLoader(yaml.SafeLoader):
    """YAML 1.2 floats: ``1e-3`` is a number (PyYAML's YAML 1.1 rules read it as a string)."""


_YAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def load_yaml(text: str):
    """Parse YAML as profiles and ``-p`` values are read (``1e-3`` a float, ``null`` None, ``[1, 2]`` a list)."""
    return yaml.load(text, Loader=_YAMLLoader)


def _file(path) -> Path:
    """A file named on the command line: relative to the working directory if it is there, else to the root."""
    path = Path(path).expanduser()
    return path if path.exists() else resolve(path)


# ----------------------------------------------------------------------------------------------------------
# Notebooks, profiles, overrides


def notebook_parameters(notebook: str) -> dict:
    """The ``parameters`` cell of ``notebooks/<notebook>.ipynb`` as ``{name: default}``, read by papermill itself
    (``inspect_notebook``), so the names are exactly those papermill accepts without an unknown-parameter warning."""
    path = NOTEBOOKS / f"{notebook}.ipynb"
    return dict(_inspect(path, path.stat().st_mtime_ns))


@functools.lru_cache(maxsize=None)
def _inspect(path: Path, mtime_ns: int) -> dict:
    import papermill as pm

    found = pm.inspect_notebook(str(path))
    if not found:
        raise PipelineError(f"{path}: no cell tagged 'parameters', or papermill could not read one")
    return {name: ast.literal_eval(p["default"]) for name, p in found.items()}


def accepts(notebook: str, name: str) -> bool:
    """Whether ``notebook`` takes parameter ``name`` (declared, or a TrainConfig field for the training notebook)."""
    if name in notebook_parameters(notebook):
        return True
    if notebook == TRAINING_NOTEBOOK:
        from vfu_nb.training.config import training_setting_names

        return name in training_setting_names()
    return False


def _targets() -> set:
    return set(STEPS) | {nb for nb, _ in STEPS.values()}


def overrides_from(mapping: dict, origin: str) -> list:
    """``{NAME: v, "STEP.NAME": v, STEP: {NAME: v}}`` -> ``[(target or None, NAME, v, origin)]``, checked."""
    if not isinstance(mapping, dict):
        raise PipelineError(f"{origin}: expected a mapping of parameters, got {type(mapping).__name__}")
    out = []
    for key, value in mapping.items():
        key = str(key)
        if key in _targets() and isinstance(value, dict):
            out += [(key, str(name), v, origin) for name, v in _with_recipe(value, f"{origin}: {key}").items()]
        elif "." in key:
            target, name = key.split(".", 1)
            if target not in _targets():
                raise PipelineError(f"{origin}: {key}: no step or notebook {target!r}; steps: {sorted(STEPS)}")
            out.append((target, name, value, origin))
        else:
            out.append((None, key, value, origin))
    for target, name, _, where in out:
        notebooks = list(dict.fromkeys(nb for step, (nb, _) in STEPS.items() if target in (None, step, nb)))
        if not any(accepts(nb, name) for nb in notebooks):
            what = "any notebook" if target is None else ", ".join(f"{nb}.ipynb" for nb in notebooks)
            if target in STEPS and target != notebooks[0]:
                what += f" (step {target})"
            known = sorted(set().union(*(notebook_parameters(nb) for nb in notebooks)))
            extra = f" (and {TRAINING_NOTEBOOK}.ipynb any TrainConfig field)" if TRAINING_NOTEBOOK in notebooks else ""
            raise PipelineError(f"{where}: unknown parameter {name!r} for {what}; declared: {known}{extra}")
    return out


def _with_recipe(mapping: dict, origin: str) -> dict:
    """A step's or notebook's mapping with its ``recipe: FILE`` line expanded (vfu_nb.training.config.with_recipe)."""
    if "recipe" not in mapping:
        return mapping
    from vfu_nb.training.config import ConfigError, with_recipe

    try:
        return with_recipe(mapping, origin)
    except ConfigError as err:
        raise PipelineError(str(err)) from None


def load_profile(profile: str) -> dict:
    """``profiles/<profile>.yaml`` (or a YAML file path) -> ``{"name", "path", "description", "steps", "overrides"}``."""
    path = _file(profile) if profile.endswith((".yaml", ".yml")) else PROFILES_DIR / f"{profile}.yaml"
    if not path.exists():
        names = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
        raise PipelineError(f"no profile {profile!r} ({path} does not exist); profiles: {names}")
    data = load_yaml(path.read_text()) or {}
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: a profile is a mapping (steps, description, parameters)")
    steps = data.get("steps", list(STEPS))
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise PipelineError(f"{path}: unknown steps {unknown}; steps: {list(STEPS)}")
    together = [list(group) for group in data.get("together", [])]
    for group in together:
        if not set(group) <= set(steps) or len(group) < 2:
            raise PipelineError(f"{path}: together: {group} must name two or more of its steps {steps}")
    params = {k: v for k, v in data.items() if k not in PROFILE_KEYS}
    return {"name": path.stem, "path": path, "description": data.get("description", ""), "steps": list(steps),
            "together": together, "overrides": overrides_from(params, str(path))}


def stages(steps: list, together: list) -> list:
    """``steps`` in order, grouped: the steps of one ``together`` group run at the same time (each in its own
    kernel), where the group's first step stands in the order; every other step runs alone."""
    groups = {step: group for group in together for step in group}
    out, seen = [], set()
    for step in steps:
        if step in seen:
            continue
        group = [s for s in groups.get(step, [step]) if s in steps]
        seen.update(group)
        out.append(group)
    return out


def parse_assignments(pairs, files=()) -> list:
    """``-f FILE`` contents then ``-p NAME VALUE`` pairs (VALUE parsed as YAML) as checked overrides."""
    out = []
    for file in files:
        out += overrides_from(load_yaml(_file(file).read_text()) or {}, str(file))
    for name, text in pairs:
        out += overrides_from({name: load_yaml(text)}, f"-p {name} {text}")
    return out


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


def fetch_imagenet_weights(plan: dict) -> None:
    """Before any notebook runs: the ImageNet weights of every step with ``pretrained: imagenet`` into torch.hub's
    cache (downloaded once, hash-checked; :mod:`vfu_nb.weights`). Offline without the file, one PipelineError line
    says which file to put where."""
    from vfu_nb.weights import WeightsUnavailableError, cache_path, imagenet_state_dict

    steps = [{**p, **(p.get("settings") or {})} for p in plan.values()]      # a TrainConfig field may be in settings
    for backbone in sorted({p.get("backbone") or "vgg16" for p in steps if p.get("pretrained") == "imagenet"}):
        if cache_path(backbone).is_file():
            continue
        print(f"[pipeline] fetching the ImageNet weights of {backbone} into {cache_path(backbone).parent}", flush=True)
        try:
            imagenet_state_dict(backbone, progress=True)
        except WeightsUnavailableError as err:
            raise PipelineError(str(err)) from None


def parameters(profile, step: str, overrides=(), run_dir=None, defaults: bool = False) -> dict:
    """Everything passed to ``step``'s notebook: wired folders, then the profile's values, then ``overrides``.

    ``profile``: a name, a YAML path or a :func:`load_profile` result. A parameter given to every notebook
    reaches those that take it (:func:`overrides_from` has refused names that none takes). ``defaults``: start
    from the notebook's own defaults, i.e. every value the notebook will see.
    """
    profile = load_profile(profile) if isinstance(profile, str) else profile
    notebook, fixed = STEPS[step]
    run_dir = resolve(run_dir or f"runs/{profile['name']}")
    wired = {"out_dir": str(run_dir / step), "figures_dir": str(run_dir / "figures"), "progress": False,
             **{f"{m}_run": str(run_dir / f"02_train_{m}" / "run") for m in ("mtl", "cat")}}
    params = dict(notebook_parameters(notebook)) if defaults else {}
    params.update({name: value for name, value in wired.items() if accepts(notebook, name)})
    for target, name, value, origin in [*profile["overrides"], *overrides]:
        if target not in (None, step, notebook):
            continue
        if name in fixed:
            raise PipelineError(f"{origin}: {name} is set by the step ({step}: {name}={fixed[name]!r})")
        if accepts(notebook, name):
            params[name] = value
    params.update(fixed)
    if "pretrained" in params:
        params["pretrained"] = _resolve_pretrained(params["pretrained"])
    if notebook == TRAINING_NOTEBOOK:
        params = _settings_in_one_parameter(notebook, params)
    return params


def _settings_in_one_parameter(notebook: str, params: dict) -> dict:
    """The TrainConfig fields that ``notebook``'s parameters cell does not name go into its ``settings`` mapping,
    so that papermill is passed only names the cell declares."""
    declared = notebook_parameters(notebook)
    out = {name: value for name, value in params.items() if name in declared}
    extra = {name: value for name, value in params.items() if name not in declared}
    if extra:
        out["settings"] = {**(out.get("settings") or {}), **extra}
    return out


# ----------------------------------------------------------------------------------------------------------
# Running


def run_notebook(step: str, params: dict, log_output: bool = True) -> dict:
    """Execute one step into ``params["out_dir"]``; return its metrics.json (or {}), PipelineError on a failed cell."""
    import papermill as pm

    notebook, _ = STEPS[step]
    source = NOTEBOOKS / f"{notebook}.ipynb"
    out_dir = resolve(params["out_dir"])
    target = out_dir / f"{step}.ipynb"
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        # cwd = the executed notebook's folder, as when it is reopened in JupyterLab
        pm.execute_notebook(str(source), str(target), parameters=params, kernel_name="python3", cwd=str(out_dir),
                            progress_bar=False, log_output=log_output)
    except pm.PapermillExecutionError as err:
        first = next((line for line in str(err.source).splitlines() if line.strip()), "")
        raise PipelineError(f"{source.name} ({step}): cell {err.exec_count} failed with {err.ename}: {err.evalue}\n"
                            f"  the cell (In [{err.exec_count}] of the executed notebook) starts: {first}\n"
                            f"  executed notebook with the error: {target}") from None
    metrics = out_dir / "metrics.json"
    return json.loads(metrics.read_text()) if metrics.exists() else {}


def run_pipeline(profile: str = "default", overrides=(), run_dir=None, steps=None, log_output: bool = True,
                 dry_run: bool = False) -> dict:
    """Run ``steps`` (default: the profile's) of ``profile`` with ``overrides``; return ``{step: metrics}``."""
    prof = load_profile(profile)
    run_dir = resolve(run_dir or f"runs/{prof['name']}")
    steps = list(steps or prof["steps"])
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise PipelineError(f"unknown steps {unknown}; steps: {list(STEPS)}")
    plan = {step: parameters(prof, step, overrides, run_dir) for step in steps}    # every error before running
    if dry_run:
        print(yaml.safe_dump(plan, sort_keys=False), end="")
        return {}
    fetch_imagenet_weights(plan)
    # kernels import vfu_nb from this checkout even when it is not pip-installed
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    shared_cpu_env()      # the kernels inherit the thread settings for a small shared CPU
    results, timings = {}, {}
    t_start = time.perf_counter()

    def one(step):
        print(f"[pipeline] {step} ({prof['name']}): notebooks/{STEPS[step][0]}.ipynb -> "
              f"{resolve(plan[step]['out_dir']) / (step + '.ipynb')}", flush=True)
        t0 = time.perf_counter()
        results[step] = run_notebook(step, plan[step], log_output)
        timings[step] = round(time.perf_counter() - t0, 1)
        print(f"[pipeline] {step} done in {timings[step]:.0f} s", flush=True)

    for group in stages(steps, prof["together"]):
        if len(group) == 1:
            one(group[0])
        else:
            print(f"[pipeline] {', '.join(group)} at the same time", flush=True)
            with ThreadPoolExecutor(max_workers=len(group)) as pool:
                for future in [pool.submit(one, step) for step in group]:
                    future.result()
        wall = round(time.perf_counter() - t_start, 1)
        summary = {"profile": prof["name"], "seconds": timings, "wall_seconds": wall, "parameters": plan,
                   "metrics": results}
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print("[pipeline] time per step: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
          + f"; wall time {time.perf_counter() - t_start:.0f} s", flush=True)
    if "05_controls_and_seeds" not in steps and prof["name"] == "default":
        print("[pipeline] notebook 05 (seeds and controls) is not part of `make run`: it shows the committed study in "
              "results/; python -m vfu_nb.pipeline --profile study trains what it lacks", flush=True)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vfu_nb.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    names = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
    parser.add_argument("--profile", default="default", help=f"{' | '.join(names)} or a YAML file (default: default)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="NAME, STEP.NAME or NOTEBOOK.NAME and a YAML value; repeatable")
    parser.add_argument("-f", "--file", action="append", default=[], metavar="FILE.yaml",
                        help="parameters from a YAML file (same keys as -p, or STEP: {NAME: value}); repeatable")
    parser.add_argument("--data-root", help="same as -p data_root DIR (a DeepFashion-C folder)")
    parser.add_argument("--device", help="same as -p device NAME (cpu, cuda, auto)")
    parser.add_argument("--run-dir", help="where the steps write (default runs/<profile>)")
    parser.add_argument("--steps", nargs="+", choices=list(STEPS), help="run only these steps")
    parser.add_argument("--dry-run", action="store_true", help="print every step's parameters and stop")
    args = parser.parse_args(argv)
    pairs = list(args.parameter)
    pairs += [("data_root", args.data_root)] if args.data_root else []
    pairs += [("device", args.device)] if args.device else []
    # papermill logs each cell's output (the per-epoch lines of training) at INFO level
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("papermill").setLevel(logging.INFO)
    try:
        run_pipeline(args.profile, parse_assignments(pairs, args.file), args.run_dir, args.steps,
                     dry_run=args.dry_run)
    except PipelineError as err:
        print(f"[pipeline] FAILED: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
