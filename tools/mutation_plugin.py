"""pytest plugin of the mutation work copies (tools/mutation.py loads it with ``-p mutation_plugin``).

Two speed-ups, neither of which changes what a test checks:

* It imports ``torch._dynamo`` when pytest starts. mutmut's fork server forks one process per mutant after
  collecting the tests; torch imports ``torch._dynamo`` lazily at the first call of several functions (1.5 s),
  which every forked process would otherwise repeat.
* While a mutant runs, the tests of each file run fastest first (durations from mutmut's statistics), so a
  killed mutant fails early (pytest stops at the first failure). Files keep their order, so module-scoped
  fixtures are built once.
"""

import json
import os
from pathlib import Path

import torch._dynamo  # noqa: F401


def pytest_collection_modifyitems(session, config, items):
    if "__mutmut_" not in os.environ.get("MUTANT_UNDER_TEST", ""):
        return
    stats = Path("mutmut-stats.json")
    if not stats.exists():
        return
    durations = json.loads(stats.read_text()).get("duration_by_test", {})
    files = {}
    for item in items:
        files.setdefault(item.nodeid.split("::")[0], len(files))
    items.sort(key=lambda item: (files[item.nodeid.split("::")[0]], durations.get(item.nodeid, 0.0)))
