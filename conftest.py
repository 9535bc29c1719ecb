"""Loaded for every pytest run under the repository, whatever paths it is given: the notebooks' cells (nbval,
collected from notebooks/) run the whole series, so they are marked slow; ``make test`` runs them and
``-m "not slow"`` leaves them out (no kernel is started). tests/conftest.py holds the unit tests' fixtures.

Under pytest-xdist (``make test`` runs ``-n 2``) work is handed out in groups, each run on one worker in collection
order (:func:`group_of`): a test file is one group, so its module-scoped fixtures are built once, and the files that
share something outside their own ``tmp_path`` form one group together:

* ``notebooks``: nbval's cells (a notebook's cells share one kernel) and tests/test_notebooks.py, which run the
  committed notebooks in the repository, where their smoke runs land in ``runs/smoke/``;
* ``browser``: Chromium and JupyterLab servers (tests/test_browser.py, tests/test_lab.py).

tests/test_slurm.py, the only file that uses the session's Slurm cluster, is a group of its own already.
"""

import pytest

#: Test files that share state outside their tmp_path, by group.
SHARED = {"test_notebooks.py": "notebooks", "test_browser.py": "browser", "test_lab.py": "browser"}


def group_of(nodeid: str) -> str:
    """The group a test runs in under pytest-xdist: its file, or the shared group of :data:`SHARED`."""
    path = nodeid.split("::", 1)[0]
    if path.endswith(".ipynb"):
        return "notebooks"
    return SHARED.get(path.rsplit("/", 1)[-1], path)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's scheduler for every load mode (``-n N`` alone included): whole groups (:func:`group_of`),
    the groups with the most tests first. ``--dist each`` keeps xdist's own."""
    if config.getvalue("dist") == "each":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return GroupScheduling(config, log)
