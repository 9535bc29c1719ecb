"""Shared test setup: tests/ on sys.path (dftree, browser, train_helpers) and one synthetic tree per session."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

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
