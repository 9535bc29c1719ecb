"""pytest plugin of the mutation work copies (tools/mutation.py loads it with ``-p mutation_plugin``).

Speed-ups, none of which changes what a test checks:

* It imports ``torch._dynamo`` when pytest starts. mutmut's fork server forks one process per mutant after
  collecting the tests; torch imports ``torch._dynamo`` lazily at the first call of several functions (1.5 s),
  which every forked process would otherwise repeat.
* Each mutant's pytest session starts with ``gc.freeze()``: the objects it inherits from the fork server (torch,
  the collected tests) leave the garbage collector's view. pytest calls ``gc.collect()`` several times when a
  session ends (to report unraisable exceptions), which otherwise walks that whole heap, about 0.6 s per mutant.
* Synthetic trees that tests generate (``vfu_nb.data.synthetic.driver.generate`` into a new folder) are generated
  once per work copy, under ``synthetic-trees/``, and copied for every later mutant: generation is deterministic in
  its arguments, and 81 images take about 2 s. Not while mutating a module the generator itself uses (annotations).
* While a mutant runs, the tests of each file run fastest first (durations from mutmut's statistics), so a
  killed mutant fails early (pytest stops at the first failure). Files keep their order, so module-scoped
  fixtures are built once.
* A test that runs past ``30 s + 10 x`` its duration in mutmut's statistics fails with a TimeoutError (the alarm
  repeats every second until the test ends). Mutants that deadlock a thread (the batch loader's prefetch) are
  then killed in seconds instead of at mutmut's own timeout, 15 x (1 s + all their tests' durations); mutmut
  counts both as caught.
"""

import gc
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch._dynamo  # noqa: F401


#: Modules whose mutants change generated trees.
GENERATOR_MODULES = ("vfu_nb.data.annotations.", "vfu_nb.data.synthetic.")
TREES = Path("synthetic-trees")


def _stored_generate(generate):
    """``generate`` that copies a stored tree of the same arguments into a new ``out`` (storing it first)."""

    def stored(out, n, seed=0, workers=None, progress=True, **settings):
        out = Path(out)
        if out.exists():
            return generate(out, n, seed, workers, progress, **settings)
        tree = TREES / "-".join([f"n{n}", f"seed{seed}"] + [f"{k}{v}" for k, v in sorted(settings.items())])
        if not tree.is_dir():
            partial = TREES / f"{tree.name}.partial{os.getpid()}"
            TREES.mkdir(exist_ok=True)
            generate(partial, n, seed, 1, False, **settings)
            try:
                os.rename(partial, tree)
            except OSError:                 # another worker stored it first
                shutil.rmtree(partial)
        shutil.copytree(tree, out)
        return dict(generate(out, n, seed, workers, progress, **settings), cached=False)

    return stored


def pytest_configure(config):
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    if "__mutmut_" not in mutant:
        return
    gc.freeze()
    if not mutant.startswith(GENERATOR_MODULES):
        from vfu_nb.data.synthetic import driver

        driver.generate = _stored_generate(driver.generate)


def _durations() -> dict:
    """``{test id: seconds}`` from mutmut's statistics ({} outside a mutant's run or before they exist)."""
    stats = Path("mutmut-stats.json")
    if "__mutmut_" not in os.environ.get("MUTANT_UNDER_TEST", "") or not stats.exists():
        return {}
    return json.loads(stats.read_text()).get("duration_by_test", {})


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    durations = item.config.stash.get(DURATIONS, None)
    if durations is None:
        yield
        return
    limit = 30.0 + 10.0 * durations.get(item.nodeid, 0.0)   # generous: other processes may hold the CPU

    def expire(signum, frame):
        raise TimeoutError(f"{item.nodeid} ran past {limit:.0f} s under {os.environ['MUTANT_UNDER_TEST']}")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, limit, 1.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


DURATIONS = pytest.StashKey[dict]()


def pytest_collection_modifyitems(session, config, items):
    durations = _durations()
    if not durations:
        return
    config.stash[DURATIONS] = durations
    files = {}
    for item in items:
        files.setdefault(item.nodeid.split("::")[0], len(files))
    items.sort(key=lambda item: (files[item.nodeid.split("::")[0]], durations.get(item.nodeid, 0.0)))
