"""Shared test setup: tests/ on sys.path (dftree, browser, train_helpers), one synthetic tree per session, and the
notebooks (nbval) marked slow."""

import sys
from pathlib import Path

import pytest

from vfu_nb.threads import shared_cpu_env

sys.path.insert(0, str(Path(__file__).parent))
shared_cpu_env()          # before torch is imported: OpenMP threads that sleep instead of spinning (and children)


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One torch thread for the session: the tests' tiny tensors gain nothing from two, and on shared cores two
    threads make a forward pass several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

#: The session's synthetic DeepFashion-C tree: 200 images, 140 train / 30 val / 30 test, every clothes type in
#: every split (the widget filters need all three).
SYNTH_N, SYNTH_SEED = 200, 0


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """The session's synthetic tree (vfu_nb.data.synthetic), generated once; tests must not modify it."""
    from vfu_nb.data.synthetic.driver import generate

    root = tmp_path_factory.mktemp("synthetic") / "df"
    generate(root, SYNTH_N, SYNTH_SEED, progress=False)
    return root


def pytest_collection_modifyitems(config, items):
    """The notebooks' cells (nbval, collected from notebooks/) run the whole series: slow, so `make test` runs
    them and ``-m "not slow"`` leaves them out (no kernel is started then)."""
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.slow)
