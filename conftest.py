"""Loaded for every pytest run under the repository, whatever paths it is given: the notebooks' cells (nbval,
collected from notebooks/) run the whole series, so they are marked slow; ``make test`` runs them and
``-m "not slow"`` leaves them out (no kernel is started). tests/conftest.py holds the unit tests' fixtures."""

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.slow)
