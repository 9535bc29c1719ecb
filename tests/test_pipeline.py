"""The headless pipeline (vfu_nb.pipeline): the smoke profile end to end, and its failure modes.

The smoke profile runs all six notebooks with papermill on a ~120-image synthetic tree generated here, then the
test reads every notebook's ``metrics.json``: keys, value ranges, the run directories handed from 02/03 to 04/05,
the study of 06 and the figures written. A notebook that fails stops the pipeline with a non-zero exit naming
the notebook and the cell; an unknown parameter is refused before anything runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from vfu_nb import pipeline

REPO = Path(__file__).resolve().parents[1]
N_IMAGES = 120


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    from vfu_nb.synthetic import generate

    base = tmp_path_factory.mktemp("pipeline")
    data = base / "synthetic"
    generate(data, N_IMAGES, seed=1, progress=False)
    run_dir = base / "runs"
    results = pipeline.run_pipeline("smoke", data_root=str(data), run_dir=run_dir, log_output=False)
    return run_dir, data, results


def in_unit(x) -> bool:
    return x is not None and 0.0 <= x <= 1.0


def test_every_notebook_ran_and_wrote_metrics(smoke):
    run_dir, _, results = smoke
    assert list(results) == pipeline.STEPS
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["profile"] == "smoke" and set(summary["seconds"]) == set(pipeline.STEPS)
    for step in pipeline.STEPS:
        assert (run_dir / "notebooks" / f"{step}.ipynb").exists()
        assert json.loads((run_dir / step / "metrics.json").read_text()) == results[step]


def test_explore_metrics(smoke):
    m = smoke[2]["01_explore_data"]
    assert m["images"] == N_IMAGES and sum(m["images_per_split"].values()) == N_IMAGES


@pytest.mark.parametrize("step,model", [("02_train_mtl", "mtl"), ("03_train_cat", "cat")])
def test_training_metrics(smoke, step, model):
    run_dir, _, results = smoke
    m = results[step]
    assert m["model"] == model
    assert Path(m["run_dir"]) == run_dir / step / "run"                      # wired by the pipeline
    assert (run_dir / step / "run" / "checkpoints" / "best.pt").exists()
    s = m["summary"]
    assert s["epochs"] == 2 and 1 <= s["best_val_epoch"] <= 2 and s["batches"] > 0
    for key in ("category_top3", "attr_top3_texture", "attr_top3_all_grouped"):
        assert in_unit(s["test"][key]) and in_unit(s["val"][key])
    assert set(m["table_3_1"]) == {"texture", "fabric", "shape", "part", "style", "all grouped"}
    if model == "mtl":
        assert 0.0 <= s["test"]["landmark_ne_mean"] < 1.5
    else:
        assert s["test"]["landmark_ne_mean"] is None
    names = {Path(f).name for f in m["figures"]}
    expected = {"category_loss", "category_top3", "attribute_loss", "attribute_recall"}
    if model == "mtl":
        expected |= {"landmark_loss", "landmark_ne"}
    assert names == {f"{step[:2]}_{n}.png" for n in expected}
    assert all(Path(f).parent == run_dir / "figures" and Path(f).stat().st_size > 0 for f in m["figures"])


def test_compare_metrics_use_the_wired_runs(smoke):
    run_dir, data, results = smoke
    m = results["04_compare_mtl_cat"]
    assert m["mtl_run"] == str(run_dir / "02_train_mtl" / "run")
    assert m["cat_run"] == str(run_dir / "03_train_cat" / "run")
    assert not (run_dir / "fallback_runs").exists()                       # nothing retrained
    assert m["mtl_test"]["category_top3"] == results["02_train_mtl"]["summary"]["test"]["category_top3"]
    row = m["improvements_val"]["top-3 category accuracy"]
    assert row["MTL"] == m["mtl_test"]["category_top3"] and row["CAT"] == m["cat_test"]["category_top3"]
    assert row["thesis relative"] == pytest.approx(0.8605 / 0.5621 - 1)
    assert m["sentences"][0].startswith("On the synthetic benchmark (120 images")
    assert f"{row['MTL']:.4f}" in m["sentences"][0] and f"{row['CAT']:.4f}" in m["sentences"][0]
    names = {Path(f).name for f in m["figures"]}
    assert names == {"04_category_top3_mtl_vs_cat.png", "04_texture_recall_mtl_vs_cat.png", "04_confusion_mtl.png",
                     "04_confusion_cat.png", "04_per_attribute_recall.png"}


def test_attention_metrics(smoke):
    run_dir, _, results = smoke
    m = results["05_attention_maps"]
    assert m["mtl_run"] == str(run_dir / "02_train_mtl" / "run")
    best, worst = m["best_category_confidence"], m["worst_category_confidence"]
    assert min(best.values()) >= max(worst.values()) and all(in_unit(v) for v in best.values())
    assert max(m["best_landmark_error"].values()) <= min(m["worst_landmark_error"].values())
    assert {Path(f).name for f in m["figures"]} >= {"05_best_category_confidence.png",
                                                    "05_worst_landmark_error.png", "05_mtl_vs_cat_maps.png"}


def test_study_metrics(smoke):
    _, _, results = smoke
    m = results["06_controls_and_seeds"]
    assert m["runs"]["exported"] == m["runs"]["planned"] > 0
    assert set(m["chosen"]) >= {"mtl", "cat"}
    assert all(v.startswith(("mtl ", "cat ", "mtl_no_landmarks ")) for v in m["verdicts"].values())
    assert {Path(f).name for f in m["figures"]} >= {"06_study.png", "06_pairs.png"}


def test_default_profile_figures_go_to_the_repository_others_to_the_run(monkeypatch, tmp_path):
    assert pipeline.PROFILES["default"]["figures_in_repo"] and not pipeline.PROFILES["smoke"]["figures_in_repo"]
    p = pipeline.step_parameters("04_compare_mtl_cat", "default", tmp_path, None, "cuda", tmp_path / "f",
                                 {"mtl_run", "cat_run", "device", "out_dir", "figures_dir"})
    assert p == {"out_dir": str(tmp_path / "04_compare_mtl_cat"), "figures_dir": str(tmp_path / "f"),
                 "mtl_run": str(tmp_path / "02_train_mtl" / "run"), "cat_run": str(tmp_path / "03_train_cat" / "run"),
                 "device": "cuda"}


def test_full_profile_uses_imagenet_weights_only_when_present(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))                    # an empty hub cache
    p = pipeline.step_parameters("02_train_mtl", "full", tmp_path, None, None, tmp_path)
    assert p["pretrained"] is None and p["image_size"] == 224 and p["width"] == 1.0 and p["batch_size"] == 8
    weights = tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    assert pipeline.step_parameters("02_train_mtl", "full", tmp_path, None, None, tmp_path)["pretrained"] == \
        "torchvision"


def _failing_notebook(folder: Path, name: str) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("out_dir = 'x'\nfigures_dir = 'y'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# a notebook that fails"), params,
                nbformat.v4.new_code_cell("print('fine')"),
                nbformat.v4.new_code_cell("raise RuntimeError('boom in the third code cell')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, str(path))
    return path


def test_a_failing_cell_stops_the_pipeline_with_a_nonzero_exit(tmp_path):
    notebooks = tmp_path / "notebooks"
    _failing_notebook(notebooks, "99_fails")
    script = (
        "import sys; from pathlib import Path; from vfu_nb import pipeline\n"
        f"pipeline.NOTEBOOKS = Path({str(notebooks)!r})\n"
        "pipeline.PROFILES['smoke'] = dict(pipeline.PROFILES['smoke'], steps=['99_fails'])\n"
        f"sys.exit(pipeline.main(['--profile', 'smoke', '--run-dir', {str(tmp_path / 'runs')!r}]))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    # cell 4: papermill's injected-parameters cell counts too
    assert "FAILED: 99_fails.ipynb: cell 4 failed with RuntimeError: boom in the third code cell" in proc.stderr
    assert "starts: raise RuntimeError('boom in the third code cell')" in proc.stderr
    executed = tmp_path / "runs" / "notebooks" / "99_fails.ipynb"
    assert executed.exists() and "boom in the third code cell" in executed.read_text()
    assert not (tmp_path / "runs" / "summary.json").exists()


def test_an_unknown_parameter_is_refused_before_running(monkeypatch, tmp_path):
    monkeypatch.setitem(pipeline.PROFILES, "smoke", dict(pipeline.PROFILES["smoke"], steps=["02_train_mtl"],
                                                         **{"02_train_mtl": {"epoch": 3}}))
    assert pipeline.main(["--profile", "smoke", "--run-dir", str(tmp_path)]) == 1
    assert not (tmp_path / "02_train_mtl").exists()
    with pytest.raises(pipeline.PipelineError, match=r"02_train_mtl.ipynb: unknown parameters \['epoch'\]"):
        pipeline.run_pipeline("smoke", run_dir=tmp_path)
