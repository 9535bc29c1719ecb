"""Shared test setup: tests/ on sys.path (dftree, browser, train_helpers) and one synthetic tree per session. The
notebooks' cells are marked slow by the repository's conftest.py (it applies to any path pytest is given)."""

import hashlib
import os
import shutil
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


#: Where the session tree is kept between sessions (git-ignored), one folder per version of the package's code.
STORED_TREES = Path(__file__).resolve().parents[1] / "build" / "test-trees"


def code_version() -> str:
    """16 hex digits of a SHA-1 over every source file of the package, with the tree's size and seed."""
    package = Path(__file__).resolve().parents[1] / "vfu_nb"
    digest = hashlib.sha1(f"{SYNTH_N} {SYNTH_SEED}".encode())
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """The session's synthetic tree (vfu_nb.data.synthetic); tests must not modify it.

    Generating it takes about 5 s of CPU, so it is generated once per version of the package's code
    (:func:`code_version`) into ``build/test-trees/`` (under a file lock: one generator for all of pytest-xdist's
    workers) and copied from there into the session's own folder: each session starts from a fresh tree without
    caches, and any change to the package generates it again.
    """
    from filelock import FileLock

    from vfu_nb.data.synthetic.driver import generate

    stored = STORED_TREES / code_version()
    STORED_TREES.mkdir(parents=True, exist_ok=True)
    with FileLock(STORED_TREES / ".lock"):                # pytest-xdist's workers, or two sessions at once
        if not (stored / "df").is_dir():
            partial = STORED_TREES / f"{stored.name}.{os.getpid()}.tmp"
            shutil.rmtree(partial, ignore_errors=True)
            generate(partial / "df", SYNTH_N, SYNTH_SEED, progress=False)
            for old in STORED_TREES.iterdir():                    # one version kept
                if old != partial and old.name != ".lock":
                    shutil.rmtree(old, ignore_errors=True)
            os.rename(partial, stored)
        root = tmp_path_factory.mktemp("synthetic") / "df"
        shutil.copytree(stored / "df", root)              # under the lock: no other session removes it meanwhile
    return root
