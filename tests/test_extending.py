"""Small changes stay small: a new model variant is one edit of vfu_nb/models.py (its class and its registry line),
and the trainer's command line and the study take it from there, with no other file touched.

The test copies the package, makes that edit in the copy, and runs the copy in subprocesses (PYTHONPATH first), so
the checked-out package is never changed. docs/architecture.md ("Adding things") describes the same steps.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vfu_nb.paths import repo_root

REPO = repo_root()

TOY_CLASS = '''
class CATToyNet(CATNet):
    """A toy variant for tests/test_extending.py: CAT under another name."""

    names = ("cat_toy",)


'''


def add_toy_variant(package: Path) -> list[str]:
    """The newcomer's edit: the class above the registry and its line in ``NETWORKS``; return the files changed."""
    models = package / "models.py"
    source = models.read_text()
    assert source.count("\nNETWORKS = {") == 1, "the registry is one dict literal in models.py"
    source = source.replace("\nNETWORKS = {", TOY_CLASS + "NETWORKS = {\"cat_toy\": CATToyNet, ", 1)
    models.write_text(source)
    return [str(models.relative_to(package.parent))]


@pytest.fixture(scope="module")
def toy_package(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("extended")
    shutil.copytree(REPO / "vfu_nb", root / "vfu_nb", ignore=shutil.ignore_patterns("__pycache__"))
    changed = add_toy_variant(root / "vfu_nb")
    assert changed == ["vfu_nb/models.py"]
    return root


def run_copy(root: Path, *args, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *args], cwd=cwd or root, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


@pytest.mark.slow
def test_only_the_registry_file_changes_and_the_copy_is_what_runs(toy_package):
    done = run_copy(toy_package, "-c", "import vfu_nb.models as m; print(m.__file__, m.MODEL_NAMES)")
    assert done.stdout.startswith(str(toy_package / "vfu_nb" / "models.py"))
    assert "'cat_toy'" in done.stdout
    changed = [p.relative_to(toy_package / "vfu_nb") for p in (toy_package / "vfu_nb").rglob("*")
               if p.is_file() and p.read_bytes() != (REPO / "vfu_nb" / p.relative_to(toy_package / "vfu_nb"))
               .read_bytes()]
    assert [str(p) for p in changed] == ["models.py"]


@pytest.mark.slow
def test_the_trainer_and_the_study_take_a_new_variant_from_the_registry(toy_package, synth_root, tmp_path):
    # the training command line offers it (TrainConfig.model is a Literal of MODEL_NAMES)
    assert "cat_toy" in run_copy(toy_package, "-m", "vfu_nb.training", "--help").stdout
    run_dir = tmp_path / "run"
    run_copy(toy_package, "-m", "vfu_nb.training", "--model", "cat_toy", "--data-root", str(synth_root),
             "--run-dir", str(run_dir), "--epochs", "1", "--max-items", "32", "--image-size", "32", "--width",
             "0.125", "--batch-size", "8", "--threads", "1", "--no-progress")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["category_top3"] <= 1.0
    assert metrics["test"].get("landmark_ne_mean") is None          # a CAT: no landmark branch, no landmark loss

    # a plan that names it (a data file) trains and exports it, paired with cat
    plan = {"data": {"default": {"root": str(synth_root), "synthetic": False}},
            "base": {"image_size": 32, "width": 0.125, "batch_size": 8, "epochs": 1, "max_items": 32,
                     "device": "cpu", "threads": 1},
            "tuning": {"data": "default", "models": ["cat_toy", "cat"],
                       "grid": {"lr": [1e-3], "backbone": ["vgg16_bn"]}},
            "seeds": {"data": "default", "models": {"cat_toy": 1, "cat": 1}, "pairs": [["cat_toy", "cat"]]},
            "results": str(tmp_path / "results"), "runs": str(tmp_path / "runs"),
            "figures": str(tmp_path / "figures"), "bootstrap": 50}
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(plan))
    run_copy(toy_package, "-m", "vfu_nb.study", "run", str(plan_file), "--jobs", "1")
    exported = sorted(p.parent.relative_to(tmp_path / "results" / "runs")
                      for p in (tmp_path / "results" / "runs").rglob("metrics.json"))
    assert any(str(p).startswith("default/cat_toy/") for p in exported), exported
    study = json.loads((tmp_path / "results" / "study.json").read_text())
    assert "cat_toy" in json.dumps(study)
