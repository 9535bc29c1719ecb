"""Shared test setup: tests/ on sys.path (dftree, browser, train_helpers) and one synthetic tree per session. The
notebooks' cells are marked slow by the repository's conftest.py (it applies to any path pytest is given)."""

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
    """The session's synthetic tree (vfu_nb.synthetic), generated once; tests must not modify it."""
    from vfu_nb.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic") / "df"
    generate(root, SYNTH_N, SYNTH_SEED, progress=False)
    return root
