"""Mutation testing of the core modules with mutmut 3, one module at a time with that module's own tests.

    python tools/mutation.py                        # every module of MODULES, 2 workers
    python tools/mutation.py metrics losses -j 1    # some modules
    python tools/mutation.py data.loader --rerun    # only the last run's survivors again (after new tests)
    python tools/mutation.py --report               # the score table of the last runs, nothing run

Each module runs in its own copy of the repository, ``build/mutation/<module>/`` (git-ignored), whose
``pyproject.toml`` holds the repository's ``[tool.mutmut]`` section with two lists replaced: ``only_mutate`` is
that module's file and ``pytest_add_cli_args_test_selection`` its tests (:data:`MODULES`). mutmut then runs, for
every mutant, only the tests that called the mutated function while it collected its statistics.

A module's score counts the mutants of its counted functions (for ``training.loop`` only
:func:`vfu_nb.training.loop.select_best`; ``skip`` leaves out benchmark and printing code). Surviving mutants
listed in ``mutation/equivalent.md`` (name and mutated line) leave the denominator, in three kinds: equivalent
(no behaviour change), device-only (a device argument that matters only with a GPU, which a CPU-only machine
lacks) and outside mutmut (a behaviour that a test checks in ``make test`` but cannot check under mutmut's
wrappers): ``score = killed / (counted - listed)``, a timeout counting as killed. A listed mutant whose
line no longer matches, or that is now killed, is reported as stale and counts as a survivor.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from vfu_nb.threads import shared_cpu_env

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "mutation"
EQUIVALENT = ROOT / "mutation" / "equivalent.md"


@dataclass(frozen=True)
class Module:
    """One module under test: its tests, the functions whose mutants count and those left out (with why)."""

    tests: tuple[str, ...]
    functions: tuple[str, ...] = ("*",)    # globs of mutmut's function keys (x_name, xǁClassǁmethod) that count
    skip: tuple[str, ...] = ()             # globs of function keys not counted


MODULES = {
    "metrics": Module(("tests/test_metrics.py",)),
    "losses": Module(("tests/test_losses.py",)),
    "data.annotations": Module(("tests/test_annotations.py",)),
    "data.crops": Module(("tests/test_dataset.py", "tests/test_batch_loader.py")),
    "data.cache": Module(("tests/test_dataset.py", "tests/test_batch_loader.py")),
    "data.dataset": Module(("tests/test_dataset.py", "tests/test_batch_loader.py")),
    "data.augment": Module(("tests/test_dataset.py", "tests/test_batch_loader.py")),
    "data.loader": Module(("tests/test_dataset.py", "tests/test_batch_loader.py")),
    "data.identity": Module(("tests/test_identity.py",)),
    "models": Module(("tests/test_models.py",),
                     skip=("x_describe",)),                     # printing of parameter counts
    "stats": Module(("tests/test_stats.py", "-m", "not slow")),          # the coverage simulations take minutes
    "study.contrasts": Module(("tests/test_contrasts.py",)),
    "attention_mass": Module(("tests/test_attention_mass.py",)),
    "training.loop": Module(("tests/test_selection.py",),
                            functions=("x_select_best",)),     # the selection / early-stopping rule only
}

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", None: "not checked"}
CAUGHT = ("killed", "timeout")


# ----------------------------------------------------------------------------------------------------------
# Configuration


def source(name: str) -> str:
    """The file of a module of MODULES, relative to the repository: ``data.loader`` -> ``vfu_nb/data/loader.py``."""
    return f"vfu_nb/{name.replace('.', '/')}.py"


def base_config() -> dict:
    """``[tool.mutmut]`` and ``[tool.pytest.ini_options]`` of the repository's pyproject.toml."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]
    if "mutmut" not in tool:
        raise SystemExit(f"{ROOT / 'pyproject.toml'} has no [tool.mutmut] section")
    return {"mutmut": tool["mutmut"], "pytest.ini_options": tool.get("pytest", {}).get("ini_options", {})}


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML: {value!r}")


def module_pyproject(name: str) -> str:
    """The pyproject.toml of one module's work copy: pytest's settings and the narrowed [tool.mutmut].

    pytest runs without the notebook and browser plugins (nbval, playwright: unit tests do not use them, and
    loading them costs every mutant), with tools/mutation_plugin.py instead."""
    config = base_config()
    mutmut = config["mutmut"]
    config["mutmut"] = {**mutmut, "only_mutate": [source(name)],
                        "pytest_add_cli_args_test_selection": list(MODULES[name].tests),
                        "pytest_add_cli_args": mutmut.get("pytest_add_cli_args", []) + ["-p", "mutation_plugin"],
                        "also_copy": mutmut.get("also_copy", []) + ["mutation_plugin.py"]}
    config["pytest.ini_options"] = {**config["pytest.ini_options"], "testpaths": ["tests"],
                                    "addopts": ["-p", "no:cacheprovider", "-p", "no:nbval", "-p", "no:playwright"]}
    return "".join(f"[tool.{section}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items()) + "\n"
                   for section, values in config.items())


def mutant_globs(name: str) -> list[str]:
    return [f"vfu_nb.{name}.{f}__mutmut_*" for f in MODULES[name].functions]


def counted(name: str, mutant: str) -> bool:
    function = mutant.rpartition(".")[2].partition("__mutmut_")[0]
    spec = MODULES[name]
    return any(fnmatch.fnmatchcase(function, g) for g in spec.functions) and \
        not any(fnmatch.fnmatchcase(function, g) for g in spec.skip)


# ----------------------------------------------------------------------------------------------------------
# Running


def _copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _mutmut() -> list[str]:
    script = Path(sys.executable).parent / "mutmut"
    return [str(script)] if script.exists() else [shutil.which("mutmut") or "mutmut"]


def _environment() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MUTANT_UNDER_TEST")}
    # one thread per worker: the workers are the parallelism (and torch's OpenMP threads must not spin)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1")
    return shared_cpu_env(env)


def run_module(name: str, max_children: int, rerun: bool) -> float:
    """Run mutmut on one module in its work copy; returns the wall time in seconds."""
    work = WORK / name
    survivors = [m for m, status in load_results(name).items() if status not in CAUGHT] if rerun else []
    if rerun and not survivors:
        print(f"{name}: no earlier survivors to rerun")
        return 0.0
    if not rerun and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    _copy_tree(ROOT / "tests", work / "tests")
    if rerun:
        (work / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)    # new or changed tests: fresh stats
        changed = (ROOT / source(name)).read_bytes() != (work / source(name)).read_bytes()
        if changed:
            raise SystemExit(f"{name}: {source(name)} changed since the last run; run it without --rerun")
    else:
        _copy_tree(ROOT / "vfu_nb", work / "vfu_nb")
    (work / "pyproject.toml").write_text(module_pyproject(name))
    shutil.copy(ROOT / "tools" / "mutation_plugin.py", work / "mutation_plugin.py")
    command = _mutmut() + ["run", "--max-children", str(max_children)] + (survivors if rerun else mutant_globs(name))
    print(f"{name}: mutmut run in {work.relative_to(ROOT)} ({', '.join(MODULES[name].tests)})", flush=True)
    start, cpu_start = time.perf_counter(), _children_cpu()
    with open(work / "mutmut.log", "w") as log:
        proc = subprocess.run(command, cwd=work, env=_environment(), stdout=log, stderr=subprocess.STDOUT)
    seconds, cpu_seconds = time.perf_counter() - start, _children_cpu() - cpu_start
    if proc.returncode != 0:
        tail = (work / "mutmut.log").read_text(errors="replace")[-4000:]
        raise SystemExit(f"{name}: mutmut failed (exit code {proc.returncode}); end of {work / 'mutmut.log'}:\n{tail}")
    (work / "seconds.json").write_text(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "rerun": rerun,
                                                   "max_children": max_children}))
    return seconds


def _children_cpu() -> float:
    """CPU seconds (user + system) used so far by finished child processes (mutmut and every process it forked)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ----------------------------------------------------------------------------------------------------------
# Results


def load_results(name: str) -> dict:
    """``{mutant name: status}`` of the last run of a module, counted mutants only ({} if never run)."""
    meta = WORK / name / "mutants" / f"{source(name)}.meta"
    if not meta.exists():
        return {}
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    return {m: STATUS.get(code, "suspicious") for m, code in codes.items() if counted(name, m)}


def mutant_diff(name: str, mutant: str) -> str:
    """The unified diff of one mutant (mutmut's own), read from the module's work copy."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    cwd = os.getcwd()
    os.chdir(WORK / name)
    try:
        return get_diff_for_mutant(mutant, path=source(name))
    finally:
        os.chdir(cwd)


def changed_lines(diff: str) -> str:
    return " ".join(line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++"))


def load_equivalents() -> dict:
    """``{mutant name: (kind, mutated line)}`` from mutation/equivalent.md.

    Entries are list items ``- `NAME` `MUTATED LINE`: reason``; ``kind`` is "device" under a ``## Device``
    heading (equivalent while every tensor is on the CPU), "outside" under ``## Checked outside mutmut``, else
    "equivalent"."""
    if not EQUIVALENT.exists():
        return {}
    entries, kind = {}, "equivalent"
    for line in EQUIVALENT.read_text().splitlines():
        if line.startswith("## "):
            title = line[3:].lower()
            kind = "device" if title.startswith("device") else "outside" if title.startswith("checked outside") \
                else "equivalent"
        match = re.match(r"\s*[-*] `([^`]+__mutmut_\d+)` `([^`]*)`", line)
        if match:
            entries[match.group(1)] = (kind, match.group(2).strip())
    return entries


def score(name: str, equivalents: dict) -> dict:
    """Counts, score and survivors of one module's last run; listed mutants are checked against their diff."""
    results = load_results(name)
    listed, stale = {}, []
    for mutant, (kind, line) in equivalents.items():
        if not mutant.startswith(f"vfu_nb.{name}.") or mutant not in results:
            continue
        if results[mutant] in CAUGHT:
            stale.append(f"{mutant}: listed as {kind}, but killed")
        elif line not in changed_lines(mutant_diff(name, mutant)):
            stale.append(f"{mutant}: listed as {kind}, but its mutated line is no longer `{line}`")
        else:
            listed[mutant] = kind
    killed = sum(s in CAUGHT for s in results.values())
    survivors = sorted((m for m, s in results.items() if s not in CAUGHT and m not in listed),
                       key=lambda m: (m.partition("__mutmut_")[0], int(m.rpartition("_")[2])))
    kinds = {kind: sum(k == kind for k in listed.values()) for kind in ("equivalent", "device", "outside")}
    denominator = len(results) - len(listed)
    seconds_file = WORK / name / "seconds.json"
    seconds = json.loads(seconds_file.read_text()) if seconds_file.exists() else {}
    return {"module": name, "mutants": len(results), "killed": killed, **kinds,
            "survived": len(survivors), "score": killed / denominator if denominator else float("nan"),
            "survivors": survivors, "stale": stale, "seconds": seconds.get("seconds"),
            "cpu_seconds": seconds.get("cpu_seconds"), "rerun": seconds.get("rerun", False), "statuses": results}


def report(names, equivalents, show_diffs: bool) -> list:
    rows = [score(name, equivalents) for name in names]
    for row in rows:
        for mutant in row["survivors"] if show_diffs else []:
            print(f"\n# {mutant}: {row['statuses'][mutant]}\n{mutant_diff(row['module'], mutant)}")
        for line in row["stale"]:
            print(f"stale entry in {EQUIVALENT.relative_to(ROOT)}: {line}")
    print("\n| module | mutants | killed | equivalent | device-only | outside mutmut | survived | score | wall time "
          "| CPU time |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if not r["mutants"]:
            print(f"| {r['module']} | not run | | | | | | | | |")
            continue
        wall, cpu = (f"{r[k] / 60:.1f} min" if r[k] is not None else "" for k in ("seconds", "cpu_seconds"))
        print(f"| {r['module']} | {r['mutants']} | {r['killed']} | {r['equivalent']} | {r['device']} | "
              f"{r['outside']} | {r['survived']} | {100 * r['score']:.1f}% | {wall}{' (rerun)' if r['rerun'] else ''} | {cpu} |")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE",
                        help=f"modules to test (default all: {', '.join(MODULES)})")
    parser.add_argument("-j", "--max-children", type=int, default=2, help="mutmut workers (default 2)")
    parser.add_argument("--rerun", action="store_true", help="rerun only the survivors of the last run")
    parser.add_argument("--report", action="store_true", help="print the last results, run nothing")
    parser.add_argument("--diffs", action="store_true", help="print the diff of every surviving mutant")
    parser.add_argument("--min-score", type=float, default=0.9, help="exit 1 if a module scores lower (default 0.9)")
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; choose from {', '.join(MODULES)}")
    names = args.modules or list(MODULES)
    total = 0.0
    if not args.report:
        for name in names:
            seconds = run_module(name, args.max_children, args.rerun)
            total += seconds
            print(f"{name}: {seconds / 60:.1f} min", flush=True)
    rows = report(names, load_equivalents(), args.diffs or not args.report)
    if not args.report:
        cpu = sum(r["cpu_seconds"] or 0 for r in rows)
        print(f"\ntotal: {total / 60:.1f} min wall time, {cpu / 60:.1f} min CPU time, --max-children "
              f"{args.max_children}, load average {os.getloadavg()[0]:.1f} at the end")
    low = [r["module"] for r in rows if r["mutants"] and not r["score"] >= args.min_score]
    if low:
        print(f"below {100 * args.min_score:.0f}%: {', '.join(low)}")
    return 1 if low else 0


if __name__ == "__main__":
    sys.exit(main())
