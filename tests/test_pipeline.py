"""The headless pipeline (vfu_nb.pipeline): profiles, -p/-f overrides, the smoke profile end to end, failures.

The smoke profile runs notebooks 01-04 with papermill on the session's 200-image synthetic tree; the test reads
every step's ``metrics.json``: keys, value ranges, the run directories handed from 02 to 03 and 04, the figures.
Notebook 05 (the study) runs as a step of its own. A notebook that fails stops the pipeline with exit code 1
naming the notebook and the cell; a parameter no notebook takes is refused before anything runs.
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
from vfu_nb.study import report as reports
from vfu_nb.training.runs import train_settings

REPO = Path(__file__).resolve().parents[1]
SERIES = ["01_explore_data", "02_train_mtl", "02_train_cat", "03_compare_mtl_cat", "04_attention_maps"]


def overrides(**params):
    return pipeline.parse_assignments([(k.replace("__", "."), json.dumps(v)) for k, v in params.items()])


# ----------------------------------------------------------------------------------------------------------
# Profiles and overrides (no notebook runs)


def test_every_profile_file_loads_and_the_default_is_make_run():
    names = sorted(p.stem for p in pipeline.PROFILES_DIR.glob("*.yaml"))
    assert names == ["default", "full", "smoke", "study"]
    for name in names:
        profile = pipeline.load_profile(name)
        for step in profile["steps"]:
            pipeline.parameters(profile, step)              # every value reaches a notebook that takes it
    assert pipeline.load_profile("default")["steps"] == SERIES
    assert pipeline.load_profile("smoke")["steps"] == SERIES + ["05_controls_and_seeds"]


def test_default_profile_trains_both_models_with_the_make_run_settings(tmp_path):
    for model in ("mtl", "cat"):
        p = pipeline.parameters("default", f"02_train_{model}", run_dir=tmp_path)
        assert (p["out_dir"], p["figures_dir"], p["progress"]) == (str(tmp_path / f"02_train_{model}"), "figures",
                                                                   False)
        assert train_settings(p) == {
            "progress": False, "backbone": "vgg16_bn", "lr": 1e-3, "lr_schedule": "exp", "lr_gamma": 0.9,
            "epochs": 20, "patience": 4, "min_epochs": 10, "batch_size": 8, "image_size": 64, "width": 0.25,
            "threads": 1, "max_items": None, "model": model}
    assert pipeline.load_profile("default")["together"] == [["02_train_mtl", "02_train_cat"]]
    p = pipeline.parameters("default", "03_compare_mtl_cat", run_dir=tmp_path)
    assert p == {"out_dir": str(tmp_path / "03_compare_mtl_cat"), "figures_dir": "figures",
                 "mtl_run": str(tmp_path / "02_train_mtl" / "run"), "cat_run": str(tmp_path / "02_train_cat" / "run")}


@pytest.mark.parametrize("profile", ["default", "smoke", "full", "study"])
def test_papermill_is_passed_only_names_the_notebooks_declare(profile, tmp_path, caplog):
    """What makes papermill warn "Passed unknown parameter": a name its own parser does not find in the cell."""
    import papermill as pm

    given = overrides(lr_schedule="cosine", weight_decay=1e-5) if profile != "study" else []
    prof = pipeline.load_profile(profile)
    for step in prof["steps"]:
        notebook = pipeline.STEPS[step][0]
        declared = set(pm.inspect_notebook(str(REPO / "notebooks" / f"{notebook}.ipynb")))
        passed = pipeline.parameters(prof, step, given, tmp_path)
        assert set(passed) <= declared, f"{profile}/{step}: {sorted(set(passed) - declared)} undeclared"
        if notebook == pipeline.TRAINING_NOTEBOOK and given:
            assert passed["settings"]["lr_schedule"] == "cosine" and passed["settings"]["weight_decay"] == 1e-5
    assert "Unable to parse" not in caplog.text


def test_settings_win_over_the_cells_names_and_must_be_trainconfig_fields():
    assert train_settings({"lr": 1e-3, "settings": {"lr": 0.01, "patience": 2}}) == {"lr": 0.01, "patience": 2}
    with pytest.raises(ValueError, match=r"settings: \['lr_shedule'\] are not TrainConfig fields"):
        train_settings({"settings": {"lr_shedule": "cosine"}})


def test_smoke_training_settings_are_the_notebook_defaults():
    settings = train_settings(pipeline.parameters("smoke", "02_train_cat", defaults=True))
    assert settings == {"model": "cat", "data_root": "data/synthetic", "progress": False, "epochs": 2,
                        "batch_size": 16, "lr": 0.001, "image_size": 32, "width": 0.125, "max_items": 64, "seed": 0,
                        "device": "cpu"}
    assert pipeline.parameters("smoke", "02_train_mtl")["out_dir"] == str(REPO / "runs" / "smoke" / "02_train_mtl")


def test_p_goes_to_every_notebook_that_declares_the_name_or_to_one_step(tmp_path):
    given = overrides(device="cuda", epochs=3, **{"02_train_cat__lr": 0.01, "02_train__seed": 7})
    mtl = pipeline.parameters("default", "02_train_mtl", given, tmp_path)
    cat = pipeline.parameters("default", "02_train_cat", given, tmp_path)
    compare = pipeline.parameters("default", "03_compare_mtl_cat", given, tmp_path)
    explore = pipeline.parameters("default", "01_explore_data", given, tmp_path)
    assert (mtl["device"], mtl["epochs"], mtl["lr"], mtl["seed"]) == ("cuda", 3, 1e-3, 7)
    assert (cat["device"], cat["epochs"], cat["lr"], cat["seed"]) == ("cuda", 3, 0.01, 7)
    assert compare["device"] == "cuda" and "epochs" not in compare
    assert "device" not in explore


def test_values_are_yaml_and_later_overrides_win(tmp_path):
    settings = tmp_path / "settings.yaml"
    settings.write_text("epochs: 4\n02_train_cat:\n  lr: 1e-3\n  lr_schedule: cosine\nmax_items: null\n")
    given = pipeline.parse_assignments([("epochs", "5"), ("02_train_cat.weight_decay", "1e-5"),
                                        ("figures_dir", "elsewhere")], [settings])
    p = train_settings(pipeline.parameters("smoke", "02_train_cat", given, tmp_path))
    assert p["epochs"] == 5 and p["lr"] == 0.001 and isinstance(p["lr"], float) and p["lr_schedule"] == "cosine"
    assert p["max_items"] is None and p["weight_decay"] == 1e-5
    assert pipeline.parameters("smoke", "02_train_cat", given, tmp_path)["figures_dir"] == "elsewhere"
    assert "lr_schedule" not in train_settings(pipeline.parameters("smoke", "02_train_mtl", given, tmp_path))


@pytest.mark.parametrize("assignment,message", [
    (("epoch", "3"), r"unknown parameter 'epoch' for any notebook; declared: \[.*'epochs'"),
    (("03_compare_mtl_cat.epochs", "3"), r"unknown parameter 'epochs' for 03_compare_mtl_cat.ipynb"),
    (("02_train_mtl.epoch", "3"), r"unknown parameter 'epoch' for 02_train.ipynb \(step 02_train_mtl\)"),
    (("99_nothing.epochs", "3"), r"no step or notebook '99_nothing'"),
])
def test_unknown_parameters_are_refused(assignment, message):
    with pytest.raises(pipeline.PipelineError, match=message):
        pipeline.parse_assignments([assignment])


def test_a_step_keeps_its_model(tmp_path):
    with pytest.raises(pipeline.PipelineError, match=r"model is set by the step \(02_train_mtl: model='mtl'\)"):
        pipeline.parameters("smoke", "02_train_mtl", overrides(model="cat"), tmp_path)


def test_pretrained_torchvision_is_used_only_when_its_file_is_present(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))                    # an empty hub cache
    p = train_settings(pipeline.parameters("full", "02_train_mtl", overrides(pretrained="torchvision"),
                                           run_dir=tmp_path))
    assert p["pretrained"] is None and p["image_size"] == 224 and p["width"] == 1.0 and p["device"] == "auto"
    assert pipeline.parameters("full", "04_attention_maps", run_dir=tmp_path)["device"] == "auto"
    weights = tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    assert train_settings(pipeline.parameters("full", "02_train_mtl", overrides(pretrained="torchvision"),
                                              run_dir=tmp_path))["pretrained"] == "torchvision"


def test_dry_run_prints_the_parameters_and_runs_nothing(tmp_path, capsys):
    assert pipeline.main(["--profile", "smoke", "--run-dir", str(tmp_path), "--steps", "02_train_cat",
                          "-p", "epochs", "3", "--dry-run"]) == 0
    plan = pipeline.load_yaml(capsys.readouterr().out)
    assert list(plan) == ["02_train_cat"] and plan["02_train_cat"]["epochs"] == 3
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_parameter_stops_the_cli_before_running(tmp_path, capsys):
    assert pipeline.main(["--profile", "smoke", "--run-dir", str(tmp_path), "-p", "02_train_mtl.epoch", "3"]) == 1
    assert "FAILED: -p 02_train_mtl.epoch 3: unknown parameter 'epoch'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


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


@pytest.mark.slow
def test_a_failing_cell_stops_the_pipeline_with_a_nonzero_exit(tmp_path):
    notebooks = tmp_path / "notebooks"
    _failing_notebook(notebooks, "99_fails")
    profile = tmp_path / "fails.yaml"
    profile.write_text("steps: [99_fails]\n")
    script = (
        "import sys; from pathlib import Path; from vfu_nb import pipeline\n"
        f"pipeline.NOTEBOOKS = Path({str(notebooks)!r})\n"
        "pipeline.STEPS = {'99_fails': ('99_fails', {})}\n"
        f"sys.exit(pipeline.main(['--profile', {str(profile)!r}, '--run-dir', {str(tmp_path / 'runs')!r}]))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    # cell 4: papermill's injected-parameters cell counts too
    failed = next(line for line in proc.stderr.splitlines() if "FAILED" in line)   # one line: notebook, cell, error
    for fact in ("99_fails.ipynb", "cell 4", "RuntimeError", "boom in the third code cell"):
        assert fact in failed, (fact, failed)
    assert "raise RuntimeError('boom in the third code cell')" in proc.stderr        # the cell's first line
    executed = tmp_path / "runs" / "99_fails" / "99_fails.ipynb"
    assert executed.exists() and "boom in the third code cell" in executed.read_text()
    assert not (tmp_path / "runs" / "summary.json").exists()


# ----------------------------------------------------------------------------------------------------------
# The smoke profile, end to end


@pytest.fixture(scope="module")
def smoke(synth_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("pipeline") / "runs"
    results = pipeline.run_pipeline("smoke", overrides(data_root=str(synth_root)), run_dir, SERIES, log_output=False)
    return run_dir, results


def in_unit(x) -> bool:
    return x is not None and 0.0 <= x <= 1.0


def first_output_line(executed: Path, cell: int) -> str:
    """The first line a code cell printed (cell counts code cells after the injected parameters)."""
    nb = json.loads(executed.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code" and "injected-parameters" not in
            c["metadata"].get("tags", []) and "parameters" not in c["metadata"].get("tags", [])]
    outputs = [o for o in code[cell]["outputs"] if o.get("name") == "stdout"]
    return "".join(outputs[0]["text"]).splitlines()[0]


@pytest.mark.slow
def test_every_step_ran_and_wrote_metrics(smoke):
    run_dir, results = smoke
    assert list(results) == SERIES
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["profile"] == "smoke" and list(summary["seconds"]) == SERIES
    assert summary["parameters"]["02_train_cat"]["model"] == "cat"
    for step in SERIES:
        assert (run_dir / step / f"{step}.ipynb").exists()
        assert json.loads((run_dir / step / "metrics.json").read_text()) == results[step]
    assert results["01_explore_data"]["images"] == 200


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mtl", "cat"])
def test_training_metrics(smoke, model):
    run_dir, results = smoke
    step = f"02_train_{model}"
    m = results[step]
    assert m["model"] == model
    assert Path(m["run_dir"]) == run_dir / step / "run"                     # one folder per execution
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
    assert names == {f"02_{model}_{n}.png" for n in expected}
    assert all(Path(f).parent == run_dir / "figures" and Path(f).stat().st_size > 0 for f in m["figures"])
    config = json.loads((run_dir / step / "run" / "config.json").read_text())
    assert config["progress"] is False                                     # the pipeline turns progress bars off


@pytest.mark.slow
def test_compare_uses_the_runs_the_pipeline_hands_over(smoke):
    run_dir, results = smoke
    m = results["03_compare_mtl_cat"]
    assert m["mtl_run"] == str(run_dir / "02_train_mtl" / "run")
    assert m["cat_run"] == str(run_dir / "02_train_cat" / "run")
    executed = run_dir / "03_compare_mtl_cat" / "03_compare_mtl_cat.ipynb"
    line = first_output_line(executed, 0)                                            # the runs shown, not smoke runs
    assert line.index("MTL") < line.index(m["mtl_run"]) < line.index("CAT") < line.index(m["cat_run"])
    assert m["mtl_test"]["category_top3"] == results["02_train_mtl"]["summary"]["test"]["category_top3"]
    row = m["improvements_val"]["top-3 category accuracy"]
    assert row["MTL"] == m["mtl_test"]["category_top3"] and row["CAT"] == m["cat_test"]["category_top3"]
    assert row["thesis relative"] == pytest.approx(0.8605 / 0.5621 - 1)
    assert "200 images" in m["sentences"][0]                                          # the data it was computed on
    assert f"{row['MTL']:.4f}" in m["sentences"][0] and f"{row['CAT']:.4f}" in m["sentences"][0]
    names = {Path(f).name for f in m["figures"]}
    assert names == {"03_category_top3_mtl_vs_cat.png", "03_texture_recall_mtl_vs_cat.png", "03_confusion_mtl.png",
                     "03_confusion_cat.png", "03_per_attribute_recall.png"}


@pytest.mark.slow
def test_attention_metrics(smoke):
    run_dir, results = smoke
    m = results["04_attention_maps"]
    assert m["mtl_run"] == str(run_dir / "02_train_mtl" / "run")
    best, worst = m["best_category_confidence"], m["worst_category_confidence"]
    assert min(best.values()) >= max(worst.values()) and all(in_unit(v) for v in best.values())
    assert max(m["best_landmark_error"].values()) <= min(m["worst_landmark_error"].values())
    assert {Path(f).name for f in m["figures"]} >= {"04_best_category_confidence.png",
                                                    "04_worst_landmark_error.png", "04_mtl_vs_cat_maps.png"}


@pytest.mark.slow
def test_study_step(tmp_path):
    results = pipeline.run_pipeline("smoke", run_dir=tmp_path, steps=["05_controls_and_seeds"], log_output=False)
    m = results["05_controls_and_seeds"]
    assert 0 < m["runs"]["exported"] <= m["runs"]["planned"]        # the committed study, possibly still running
    assert set(m["chosen"]) >= {"mtl", "cat"}
    shown = reports.load_study(REPO / "results" / "plan.yaml")   # the notebook reports the committed study
    assert m["verdicts"] == {f"{p['a']} − {p['b']} | {k}": r["verdict"]
                             for p in shown["seeds"]["pairs"] for k, r in p["primary"].items()}
    assert set(m["verdicts"].values()) <= {"a better", "b better", "no difference established"}
    assert {Path(f).name for f in m["figures"]} >= {"05_study.png", "05_pairs.png"}


def test_steps_of_a_together_group_form_one_stage_at_the_first_ones_place():
    steps = ["01_explore_data", "02_train_mtl", "02_train_cat", "03_compare_mtl_cat"]
    assert pipeline.stages(steps, [["02_train_mtl", "02_train_cat"]]) == [
        ["01_explore_data"], ["02_train_mtl", "02_train_cat"], ["03_compare_mtl_cat"]]
    assert pipeline.stages(steps, []) == [[s] for s in steps]
    # a group member left out of --steps is simply not run
    assert pipeline.stages(["02_train_cat", "03_compare_mtl_cat"], [["02_train_mtl", "02_train_cat"]]) == [
        ["02_train_cat"], ["03_compare_mtl_cat"]]


def test_a_together_group_must_name_steps_of_the_profile(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [01_explore_data, 02_train_mtl]\ntogether: [[02_train_mtl, 02_train_cat]]\n")
    with pytest.raises(pipeline.PipelineError, match="together"):
        pipeline.load_profile(str(bad))
