"""vfu_nb.study: the plan, run keys and reuse, tuning choice, paired comparison, README block (fake exports)."""

import json
import math
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from vfu_nb import stats
from vfu_nb.data.synthetic.settings import DEFAULT_GEOMETRY_INFORMATIVENESS
from vfu_nb.study import analysis, cli, runner, store
from vfu_nb.study import plan as plans
from vfu_nb.study import report as reports
from vfu_nb.study.plan import Plan

PLAN = {
    "data": {"default": {"root": "data/x", "n": 100, "seed": 0},
             "g1": {"root": "data/x_g1", "n": 100, "seed": 0, "geometry_informativeness": 1.0}},
    "base": {"image_size": 32, "width": 0.125, "batch_size": 8, "epochs": 20, "patience": 3},
    "tuning": {"data": "default", "models": ["mtl", "cat"], "grid": {"lr": [1e-3, 3e-4], "backbone": ["vgg16_bn"]},
               "seed": 0},
    "seeds": {"data": "default", "models": {"mtl": 3, "cat": 3}, "pairs": [["mtl", "cat"]]},
    "learning_curve": {"data": "default", "models": ["mtl", "cat"], "fractions": [0.5, 1.0], "seeds": 2},
    "dial": {"data": "g1", "models": ["mtl", "cat"], "seeds": 2},
    "bootstrap": 200,
}


@pytest.fixture
def plan(tmp_path):
    return Plan.load({**PLAN, "results": str(tmp_path / "results"), "runs": str(tmp_path / "runs"),
                      "figures": str(tmp_path / "figures")})


def export(plan, spec, val=0.5, test=None, best=5, run=9, stopped=True, preds=None):
    d = plan.results_dir / "runs" / spec.key
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(spec.config))
    metrics = {"model": spec.model, "seed": spec.seed, "select_metric": "category_top3", "best_epoch": best,
               "epochs_run": run, "early_stopped": stopped, "val": {"category_top3": val}, "test": test or {},
               "timing": {"wall_seconds": 360.0}}
    if preds is not None:
        np.savez_compressed(d / "predictions.npz", **preds)
    (d / "history.json").write_text(json.dumps({"epochs": [{"epoch": 1, "seconds": 200.0}, {"epoch": 2, "seconds": 160.0}]}))
    store.write_atomic(d / "metrics.json", json.dumps(metrics))


def test_plan_refuses_unknown_keys(tmp_path):
    with pytest.raises(ValueError, match="unknown keys.*'sedes'"):
        Plan.load({**PLAN, "sedes": {}})


def test_keys_and_reuse(plan):
    tuning = plan.tuning_specs()
    assert [s.key for s in tuning] == ["default/mtl/vgg16_bn_lr0.001_f1/seed0", "default/mtl/vgg16_bn_lr0.0003_f1/seed0",
                                       "default/cat/vgg16_bn_lr0.001_f1/seed0", "default/cat/vgg16_bn_lr0.0003_f1/seed0"]
    assert tuning[0].config["data_root"].endswith("data/x") and tuning[0].config["lr"] == 1e-3
    assert tuning[0].config["image_size"] == 32 and tuning[0].config["train_fraction"] == 1.0
    chosen = {"mtl": {"lr": 1e-3, "backbone": "vgg16_bn"}, "cat": {"lr": 3e-4, "backbone": "vgg16_bn"}}
    later = plan.later_specs(chosen)
    keys = [s.key for s in later]
    assert len(keys) == len(set(keys))
    # 2 models x 3 seeds, + the 50 % curve (2 x 2; the 100 % points are the seed runs), + dial 2 x 2
    assert len(later) == 6 + 4 + 4
    assert "default/mtl/vgg16_bn_lr0.001_f1/seed0" in keys            # = the chosen tuning run: trained once
    assert "default/cat/vgg16_bn_lr0.0003_f0.5/seed1" in keys
    assert "g1/cat/vgg16_bn_lr0.0003_f1/seed1" in keys
    assert next(s for s in later if s.data == "g1").config["data_root"].endswith("data/x_g1")


def test_choose_settings_by_val_and_refuses_unfinished(plan):
    specs = plan.tuning_specs()
    with pytest.raises(RuntimeError, match="has not finished"):
        plans.choose_settings(plan)
    for spec, val in zip(specs, [0.70, 0.80, 0.60, 0.60]):
        export(plan, spec, val=val, best=9 if val == 0.8 else 4, run=9, stopped=False)
    chosen, rows = plans.choose_settings(plan)
    assert chosen == {"mtl": {"backbone": "vgg16_bn", "lr": 3e-4}, "cat": {"backbone": "vgg16_bn", "lr": 1e-3}}
    assert [r["val_score"] for r in rows] == [0.70, 0.80, 0.60, 0.60]      # tie: the first setting wins
    assert [r["converged"] for r in rows] == [True, False, True, True]     # best epoch 9 of 9: not converged


def test_pending_finishes_the_tuning_before_the_seed_runs_of_tuned_models(plan):
    tuning = plan.tuning_specs()
    assert [s.key for s in plans.pending(plan)] == [s.key for s in tuning]      # nothing chosen yet
    for spec, val in zip(tuning[:2], [0.6, 0.7]):                               # mtl's tuning is complete
        export(plan, spec, val=val)
    keys = [s.key for s in plans.pending(plan)]
    assert keys[:2] == [s.key for s in tuning[2:]]                             # cat's tuning first
    assert keys[2:4] == ["default/mtl/vgg16_bn_lr0.0003_f1/seed1", "default/mtl/vgg16_bn_lr0.0003_f1/seed2"]
    assert [k.split("/")[0] for k in keys[4:]] == ["default", "default", "g1", "g1"]   # curve, then dial
    assert not any("/cat/" in k for k in keys[4:]) and len(keys) == len(set(keys))


def test_a_plan_in_another_checkout_warns_that_its_paths_mean_this_one(tmp_path, recwarn):
    """A second git worktree, say: its plan's relative paths would be read against this package's checkout."""
    other = tmp_path / "other"
    for folder in ("vfu_nb", "notebooks", "results"):
        (other / folder).mkdir(parents=True)
    (other / "pyproject.toml").write_text("")
    (other / "results" / "plan.json").write_text(json.dumps(PLAN))
    (tmp_path / "plan.json").write_text(json.dumps(PLAN))
    Plan.load(tmp_path / "plan.json")                                     # in no checkout: no warning
    Plan.load(plans.REPO / "results" / "v2" / "plan.yaml")               # in this one: none either
    assert not [w for w in recwarn if "lies in the checkout" in str(w.message)]
    with pytest.warns(UserWarning, match=rf"plan.json lies in the checkout {other}, but this vfu_nb is "
                                         rf"{plans.REPO}'s.*cd {other} && python -m vfu_nb.study"):
        Plan.load(other / "results" / "plan.json")


def test_train_pending_runs_what_finished_tuning_unlocks(plan, monkeypatch):
    def fake_train(plan_, spec, subprocess_):
        export(plan_, spec, val=0.8 if spec.config["lr"] == 3e-4 else 0.5)

    monkeypatch.setattr(runner, "_train", fake_train)
    monkeypatch.setattr(runner, "export_run", lambda plan_, spec: None)
    log = []
    runner.train_pending(plan, jobs=2, log=log.append)
    assert plans.pending(plan) == []
    chosen, _ = plans.choose_settings(plan)
    assert chosen == {"mtl": {"backbone": "vgg16_bn", "lr": 3e-4}, "cat": {"backbone": "vgg16_bn", "lr": 3e-4}}
    assert sum(line.startswith("[study] done") for line in log) == 4 + len(plan.later_specs(chosen)) - 2


def test_train_pending_stops_on_an_error_after_the_runs_in_progress(plan, monkeypatch):
    def broken(plan_, spec, subprocess_):
        raise RuntimeError(f"training {spec.key} failed (exit 1)")

    monkeypatch.setattr(runner, "_train", broken)
    with pytest.raises(RuntimeError, match="failed .exit 1"):
        runner.train_pending(plan, jobs=2, log=lambda line: None)
    assert len(plans.pending(plan)) == 4                                       # nothing was exported


def test_train_pending_keep_going_trains_the_other_runs_and_lists_the_failures(plan, monkeypatch):
    tried, active, most_at_once = [], [], []

    def cat_breaks(plan_, spec, subprocess_):
        tried.append(spec.key)
        if spec.model == "cat" and spec.config["lr"] == 3e-4:
            raise RuntimeError(f"training {spec.key} failed (exit 2)")
        active.append(spec.key)
        most_at_once.append(len(active))
        time.sleep(0.05)
        active.remove(spec.key)
        export(plan_, spec, val=0.8 if spec.config["lr"] == 3e-4 else 0.5)

    monkeypatch.setattr(runner, "_train", cat_breaks)
    monkeypatch.setattr(runner, "export_run", lambda plan_, spec: None)
    log = []
    with pytest.raises(RuntimeError, match=r"failed \(exit 2\)") as err:
        runner.train_pending(plan, jobs=2, log=log.append, keep_going=True)
    assert "runs failed" not in str(err.value)                      # one failure: its own error
    chosen, _ = plans.choose_settings(plan, partial=True)
    assert list(chosen) == ["mtl"]                                  # cat's tuning could not finish
    mtl_later = [s.key for s in plan.later_specs(chosen)]
    assert mtl_later and all(key in tried for key in mtl_later)     # mtl's seeds went on after cat's failure
    assert len(tried) == len(set(tried))                            # the failed run was not retried
    assert max(most_at_once[-len(mtl_later):]) == 2                 # both workers went on after the failure
    assert any(line.startswith("[study] ERROR default/cat/") and "going on" in line for line in log)


def test_train_pending_keep_going_names_every_failed_run_in_one_error(plan, monkeypatch):
    def no_tree(plan_, spec, subprocess_):
        raise ValueError(f"no tree for {spec.key}")

    monkeypatch.setattr(runner, "_train", no_tree)
    with pytest.raises(store.TrainingFailed, match=r"^4 runs failed \(the others were trained\): default/") as err:
        runner.train_pending(plan, jobs=2, log=lambda line: None, keep_going=True)
    assert str(err.value).count("no tree for default/") == 4 and len(plans.pending(plan)) == 4
    with pytest.raises(SystemExit) as code, store.one_line_errors():             # the command line: one line
        raise err.value
    assert code.value.code == 2


def test_train_pending_keep_going_stops_on_a_full_disk(plan, monkeypatch):
    """A full disk would fail every later run too: --keep-going does not go on past it."""
    tried = []

    def disk_full(plan_, spec, subprocess_):
        tried.append(spec.key)
        raise store.TrainingFailed(f"training {spec.key} failed (exit 2): runs/x/checkpoints/last.pt: not written: "
                                   f"no space left on the device (0 bytes free)")

    monkeypatch.setattr(runner, "_train", disk_full)
    with pytest.raises(store.TrainingFailed, match="no space left"):
        runner.train_pending(plan, jobs=1, log=lambda line: None, keep_going=True)
    assert len(tried) == 1
    assert store.disk_full(store.DiskFullError("x", free=0)) and not store.disk_full(ValueError("no space left"))


def test_study_run_command_line_passes_jobs_and_keep_going_to_the_executor(plan, tmp_path, monkeypatch):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({**PLAN, "results": str(plan.results_dir), "runs": str(tmp_path / "runs")}))
    calls = []
    monkeypatch.setattr(cli.executors, "train", lambda plan_, executor, **kw: calls.append((executor, kw)) or False)
    cli.main(["run", str(path), "--jobs", "2", "--keep-going"])
    cli.main(["run", str(path)])
    assert [(e, kw["jobs"], kw["keep_going"]) for e, kw in calls] == [("local", 2, True), ("local", 1, False)]


def test_compact_history_keeps_epochs_and_averages_batches():
    n = 1000
    history = {"batches": {"epoch": [1] * n, "batch": list(range(1, n + 1)), "step": list(range(1, n + 1)),
                           "total": [float(i) for i in range(n)]},
               "epochs": [{"epoch": 1, "val": {"category_top3": 0.123456789}}]}
    c = runner.compact_history(history, max_points=100)
    assert c["batch_window"] == 10 and len(c["batches"]["total"]) == 100
    assert c["batches"]["total"][0] == pytest.approx(4.5) and c["batches"]["step"][0] == 10
    assert c["epochs"][0]["val"]["category_top3"] == 0.123457


def seed_runs(plan, gain=0.1):
    """Exports for mtl and cat x 3 seeds with per-image category ranks; mtl is right on more images."""
    rng = np.random.default_rng(0)
    chosen = {"mtl": {"lr": 1e-3, "backbone": "vgg16_bn"}, "cat": {"lr": 1e-3, "backbone": "vgg16_bn"}}
    specs = [s for s in plan.later_specs(chosen) if s.part == "seeds"]
    labels = plan.results_dir / "labels"
    labels.mkdir(parents=True, exist_ok=True)
    n = 400
    np.savez(labels / "default.npz", category=np.zeros(n, np.int16), attributes=np.ones((n, 2), np.int8))
    for spec in specs:
        base = rng.random(n) < 0.6
        right = base | (rng.random(n) < gain) if spec.model == "mtl" else base
        rank = np.where(right, 0, 5).astype(np.int16)
        export(plan, spec, test={"category_top3": float(right.mean()), "category_top1": float(right.mean())},
               preds={"category_rank": rank, "attribute_logits": np.zeros((n, 2), np.float32)})
    return analysis.load_runs(plan, specs)


def store_baselines(plan, values=None):
    """results/baselines/<tag>.json for every tree of the plan, as the report writes them (trees not needed)."""
    for tag, settings in plan.data.items():
        path = plan.results_dir / "baselines" / f"{tag}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"data": tag, "settings": settings, "split": "test",
                                    "baselines": values or {"chance": {"category_top3": 0.06}}}))


def test_report_of_a_study_in_progress_shows_the_tuned_models_and_names_the_rest(plan):
    store_baselines(plan)
    tuning = plan.tuning_specs()
    for spec, val in zip(tuning[:3], [0.8, 0.7, 0.6]):                 # mtl tuned; cat has 1 of 2 runs
        export(plan, spec, val=val, test={"category_top3": val - 0.1, "attr_map_all": 0.3})
    result = reports.report(plan, log=lambda line: None)
    assert result["chosen"] == {"mtl": {"backbone": "vgg16_bn", "lr": 1e-3}} and result["tuning_unfinished"] == ["cat"]
    top3 = next(r for r in result["seeds"]["summary"] if r["metric"] == "category_top3")
    assert top3["model"] == "mtl" and top3["n"] == 1 and top3["mean"] == pytest.approx(0.7)
    assert top3["std"] is None                                           # one seed: no sd (and the figures cope)
    assert (plan.resolve(plan.figures) / reports.FIGURES["models"]).exists()
    for spec in [s for s in plans.pending(plan) if s.part == "seeds"]:
        export(plan, spec, test={"category_top3": 0.72, "attr_map_all": 0.32})
    result = reports.report(plan, log=lambda line: None)
    top3 = next(r for r in result["seeds"]["summary"] if r["metric"] == "category_top3")
    assert top3["n"] == 3 and top3["mean"] == pytest.approx((0.7 + 2 * 0.72) / 3)
    assert result["seeds"]["pairs"] == [] and "learning_curve" not in result and "dial" not in result
    assert result["runs"]["exported"] == 5 and result["runs"]["planned"] == 16     # 4 tuning + 12 later
    assert result["runs"]["train_hours"] == pytest.approx(5 * 360 / 3600)           # summed over epochs
    block = reports.readme_block(result)
    assert "5 of 16" in block and "(`cat` still tuning)" in block                  # the partial study, from study.json


def test_image_metrics_of_the_bootstrap_equal_the_metrics_on_the_drawn_images():
    from vfu_nb.metrics import average_precision

    rng = np.random.default_rng(0)
    attrs = rng.choice(np.array([1, -1, 0], np.int8), (200, 6), p=[0.2, 0.7, 0.1])
    p = {"category_rank": rng.integers(0, 6, 200).astype(np.int16),
         "attribute_logits": np.round(rng.normal(size=(200, 6)), 1).astype(np.float32)}      # with ties
    labels = {"category": np.zeros(200, np.int16), "attributes": attrs}
    top3, mean_ap = analysis.image_metric("category_top3", labels), analysis.image_metric("attr_map_all", labels)
    for idx in (np.arange(200), rng.integers(0, 200, 200)):
        assert top3(p, idx) == pytest.approx(np.mean(p["category_rank"][idx] < 3))
        want = np.nanmean(average_precision(p["attribute_logits"][idx], attrs[idx] > 0, attrs[idx] != 0))
        assert mean_ap(p, idx) == pytest.approx(want, abs=1e-9)
    with pytest.raises(ValueError, match="no image-level form"):
        analysis.image_metric("landmark_ne_mean", labels)


def test_compare_establishes_a_clear_gain_and_not_a_null_one(plan):
    results = seed_runs(plan, gain=0.3)
    out = analysis.compare(plan, results, "mtl", "cat", metrics_primary=("category_top3",),
                        metrics_secondary=("category_top1", "landmark_ne_mean"))
    assert out["seeds"] == [0, 1, 2]
    res = out["primary"]["category_top3"]
    assert res["verdict"] == "a better" and res["t"]["low"] > 0 and res["bootstrap"]["low"] > 0
    assert out["secondary"]["category_top1"]["verdict"] == "a better"
    assert out["secondary"]["landmark_ne_mean"]["verdict"] == "no difference established"   # no values
    null = analysis.compare(plan, results, "cat", "cat", metrics_primary=("category_top3",), metrics_secondary=())
    assert null["primary"]["category_top3"]["verdict"] == "no difference established"


def test_verdict_needs_every_interval_on_one_side():
    from vfu_nb.stats import Interval

    pos, neg, wide = Interval(0.1, 0.05, 0.15, 3), Interval(-0.1, -0.15, -0.05, 3), Interval(0.1, -0.05, 0.2, 3)
    assert analysis.verdict("category_top3", pos, pos) == "a better"
    assert analysis.verdict("category_top3", pos, wide) == "no difference established"
    assert analysis.verdict("category_top3", neg) == "b better"
    assert analysis.verdict("landmark_ne_mean", neg) == "a better"                        # lower NE is better
    assert analysis.verdict("category_top3", pos, neg) == "no difference established"


def fake_study():
    interval = {"mean": 0.05, "low": 0.01, "high": 0.09, "n": 5, "p": 0.02}
    summary = [{"model": m, "metric": k, "n": 5, "values": [v] * 5, "mean": v, "std": 0.01, "not_converged": 0}
               for m, v in (("mtl", 0.9), ("cat", 0.85)) for k in reports.TABLE_METRICS]
    return {"base": PLAN["base"], "data": PLAN["data"], "grid": PLAN["tuning"]["grid"],
            "seed_counts": PLAN["seeds"]["models"], "primary": list(analysis.PRIMARY),
            "secondary": list(analysis.SECONDARY), "chosen": {"mtl": {"lr": 0.001}, "cat": {"lr": 0.0003}},
            "seeds": {"data": "default", "summary": summary, "pairs": [
                {"a": "mtl", "b": "cat", "seeds": [0, 1, 2, 3, 4],
                 "primary": {m: {"t": interval, "bootstrap": interval, "verdict": "a better"} for m in analysis.PRIMARY},
                 "secondary": {"category_top1": {"t": interval, "p_holm": 0.3, "verdict": "no difference established"}}}]},
            "baselines": {"default": {"class_prior": {"category_top3": 0.447}}},
            "runs": {"exported": 10, "planned": 10, "train_hours": 1.25}}


def test_readme_block_renders_numbers_from_study_and_updates_between_markers(tmp_path):
    block = reports.readme_block(fake_study())
    assert "| `mtl` | lr 0.001 | 5 | 0.900 ± 0.010" in block
    assert "| baseline: class prior | | | 0.447 |" in block
    assert "+0.050 [+0.010, +0.090] / [+0.010, +0.090]: **established**" in block
    assert "1.2 hours" in block and "0.6 hours" in block                          # train_hours, and over 2 jobs
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{reports.BLOCK_BEGIN}\nold\n{reports.BLOCK_END}\noutro\n")
    assert reports.update_readme(block, readme) is True
    assert reports.update_readme(block, readme) is False
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    (tmp_path / "study.json").write_text(json.dumps(fake_study()))
    assert reports.readme_matches(tmp_path / "study.json", readme)
    readme.write_text(text.replace("0.900", "0.901"))
    assert not reports.readme_matches(tmp_path / "study.json", readme)
    with pytest.raises(ValueError, match="markers"):
        reports.update_readme(block, tmp_path / "study.json")


def test_pair_lines_give_both_intervals_and_cope_with_one_seed():
    pair = fake_study()["seeds"]["pairs"][0]
    lines = reports.pair_lines(pair)
    assert len(lines) == 3                                              # two primary metrics, then the secondary
    for needed in ("+0.0500", "t [+0.0100, +0.0900]", "bootstrap [+0.0100, +0.0900]", "5 seeds", "mtl is better"):
        assert needed in lines[0]
    assert "no difference established" in lines[-1]                   # no secondary metric established
    one = {"a": "mtl", "b": "cat", "seeds": [0], "primary": {"attr_map_all": {
        "t": {"mean": -0.01, "low": None, "high": None}, "bootstrap": {"mean": -0.01, "low": -0.03, "high": 0.01},
        "verdict": "no difference established"}}}
    (line,) = reports.pair_lines(one, digits=3)
    for needed in ("-0.010", "t [–, –]", "bootstrap [-0.030, +0.010]", "1 seed", "no difference established"):
        assert needed in line
    assert len(reports.pair_lines({**one, "secondary": {}})) == 1       # none tested (the dial): no Holm line


def test_a_diverged_tuning_run_is_recorded_and_loses(plan):
    specs = plan.tuning_specs()
    runner.export_failure(plan, specs[0], "diverged: non-finite total loss at epoch 2, batch 7")
    recorded = json.loads((plan.results_dir / "runs" / specs[0].key / "config.json").read_text())
    assert recorded["data_root"] == "data/x" and recorded["lr"] == specs[0].config["lr"]   # portable, like export_run
    for spec in specs[1:]:
        export(plan, spec, val=0.5)
    chosen, rows = plans.choose_settings(plan)
    assert chosen["mtl"] == {"backbone": "vgg16_bn", "lr": 3e-4}
    assert rows[0]["failed"].startswith("diverged") and math.isnan(rows[0]["val_score"])
    assert analysis.load_runs(plan, specs[:1]) == []                       # left out of every summary


def test_readme_block_before_results_shows_the_setting_from_the_plan(plan):
    block = reports.readme_block(analysis.skeleton(plan))
    assert "| input | 224 px | 32 px crops of the box |" in block
    assert "patience 3, at most 20 epochs" in block and "3 for `mtl`" in block
    assert "(0 of 4)" in block and "| `mtl` |" not in block             # tuning runs exported of planned; no table


def test_the_committed_readme_matches_the_committed_results():
    """README's results section is what results/study.json (or results/plan.yaml before it) renders to."""
    assert reports.readme_matches(), "run: python -m vfu_nb.study readme"


def test_exported_results_are_not_git_ignored():
    """results/ is committed data: the ignore rules for run directories must not reach results/runs/."""
    repo = Path(__file__).resolve().parents[1]
    if not (repo / ".git").exists():
        pytest.skip("not a git checkout")
    paths = ["results/runs/default/mtl/vgg16_lr0.001_f1/seed0/metrics.json", "results/labels/default.npz",
             "results/study.json"]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=repo, capture_output=True, text=True)
    assert ignored.stdout == "", f"git ignores committed results: {ignored.stdout}"
    for path in ("runs/study/default/mtl/x/checkpoints/best.pt", "data/synthetic/Anno/list_bbox.txt"):
        assert subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=repo).returncode == 0, path


def test_make_run_trains_with_the_studys_recipe_and_chosen_settings():
    """profiles/default.yaml (make run) = results/plan.yaml's base recipe, with each model's setting that the
    committed study's tuning chose on val (once the tuning is complete); only the epoch cap may be lower."""
    from vfu_nb import pipeline

    repo = Path(__file__).resolve().parents[1]
    plan = Plan.load(repo / "results" / "plan.yaml")
    profile = pipeline.load_profile("default")
    for step, model in (("02_train_mtl", "mtl"), ("02_train_cat", "cat")):
        train = {name: value for target, name, value, _ in profile["overrides"] if target in ("02_train", step)}
        for key in ("image_size", "width", "batch_size", "lr_schedule", "lr_gamma", "patience", "min_epochs",
                    "threads"):
            assert train[key] == plan.base[key], (step, key)
        assert train["epochs"] <= plan.base["epochs"]
        summary = repo / "results" / "study.json"
        chosen = json.loads(summary.read_text()).get("chosen") if summary.exists() else None
        if chosen:
            assert {k: train[k] for k in chosen[model]} == chosen[model], (step, chosen[model])


def test_exported_configs_hold_paths_relative_to_the_repository():
    inside = str(plans.REPO / "data" / "synthetic")
    config = {"model": "mtl", "run_dir": str(plans.REPO / "runs/study/x"), "data_root": inside,
              "cache_dir": "/elsewhere/cache", "lr": 0.001}
    assert plans.portable_config(config) == {"model": "mtl", "run_dir": "runs/study/x", "data_root": "data/synthetic",
                                             "cache_dir": "/elsewhere/cache", "lr": 0.001}
    for path in (plans.REPO / "results" / "runs").glob("**/config.json"):        # the committed exports
        assert plans.portable_config(json.loads(path.read_text())) == json.loads(path.read_text()), path


@pytest.mark.slow
def test_the_smoke_study_trains_every_part_once_and_reports(synth_root, tmp_path):
    """The real path end to end (seconds per run): training, export, report; a second run trains nothing."""
    plan = plans.smoke_plan(tmp_path / "smoke", data_root=synth_root)
    log = []
    result = cli.run(plan, log=log.append)
    assert result["chosen"] == {"mtl": {"lr": 1e-3, "backbone": "vgg16_bn"}, "cat": {"lr": 1e-3, "backbone": "vgg16_bn"}}
    assert result["tuning_unfinished"] == [] and result["runs"]["exported"] == result["runs"]["planned"] == 8
    top3 = [r for r in result["seeds"]["summary"] if r["metric"] == "category_top3"]
    assert {r["model"]: r["n"] for r in top3} == {"mtl": 2, "cat": 2}
    assert [p["seeds"] for p in result["seeds"]["pairs"]] == [[0, 1]]
    assert [p["fraction"] for p in result["learning_curve"]["points"]] == [0.5, 1.0]
    exported = Path(plan["results"]) / "runs"
    assert len(list(exported.glob("*/*/*/*/metrics.json"))) == 8
    assert sorted(p.name for p in Path(plan["figures"]).glob("*.png")) == sorted(reports.FIGURES.values())
    log.clear()
    cli.run(plan, log=log.append)
    assert not any(line.startswith("[study] start") for line in log) and "0 runs to train" in log[0]


def test_every_plan_key_is_documented():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "study.md").read_text()
    missing = [k for k in Plan.__dataclass_fields__ if k != "path" and f"`{k}`" not in doc]
    assert missing == [], f"plan keys missing from docs/study.md: {missing}"


def test_pairs_figure_puts_the_seed_interval_above_the_bootstrap_and_colours_verdicts():
    import matplotlib.pyplot as plt

    from vfu_nb.plots import study as plots

    result = fake_study()
    pair = result["seeds"]["pairs"][0]
    pair["primary"]["attr_map_all"] = {"t": {"mean": 0.01, "low": -0.02, "high": 0.04},
                                       "bootstrap": {"mean": 0.01, "low": -0.01, "high": 0.03},
                                       "verdict": "no difference established"}
    fig = plots.plot_pairs(result)
    top3, mean_ap = fig.axes
    assert top3.yaxis_inverted()
    bars = {tuple(line.get_xdata()): line for line in top3.lines if line.get_xdata()[0] != line.get_xdata()[-1]}
    assert set(bars) == {(0.01, 0.09)}                  # fake_study: the same interval for t and bootstrap
    markers = {line.get_marker(): line for line in top3.lines if len(line.get_xdata()) == 1}
    assert markers["o"].get_ydata()[0] < markers["D"].get_ydata()[0]   # t drawn higher on the inverted axis
    colours = {line.get_color() for line in mean_ap.lines if line.get_marker() in ("o", "D")}
    assert colours == {"tab:gray"} and {line.get_color() for line in markers.values()} == {"tab:green"}
    plt.close(fig)


def test_contrast_plot_draws_each_interval_in_its_outcome_colour_and_labels_its_seeds():
    import matplotlib.pyplot as plt
    from vfu_nb.plots import study as plots

    row = {"contrast": "mtl_vs_cat", "weights": {"mtl": 1, "cat": -1}, "data": "default", "n": 4, "planned": 10}
    res = {"mean": 0.05, "low": 0.01, "high": 0.09, "low90": 0.02, "high90": 0.08, "outcome": "established"}
    study = {"preregistration": {"primary_metrics": ["category_top3"], "margins": {"category_top3": 0.02}},
             "primary_family": [{**row, "metric": "category_top3", "result": res}],
             "secondary_family": [{**row, "contrast": "mtl_pool_vs_cat", "weights": {"mtl_pool": 1, "cat": -1},
                                   "n": 5, "planned": 5, "metric": "category_top3",
                                   "result": {**res, "mean": 0.0, "low": -0.03, "high": 0.03, "low90": -0.01,
                                              "high90": 0.01, "outcome": "equivalent"}}]}
    fig = plots.plot_contrasts(study)
    (ax,) = fig.axes
    labels = [t.get_text().replace("\n", " ") for t in ax.get_yticklabels()]
    assert labels == ["mtl − cat (primary, 4 of 10 seeds)", "mtl_pool − cat (secondary, 5 seeds)"]
    spans = {(tuple(line.get_xdata()), line.get_color()) for line in ax.lines if len(line.get_xdata()) == 2}
    assert ((0.01, 0.09), "tab:blue") in spans and ((0.02, 0.08), "tab:blue") in spans      # 95 % and 90 %
    assert ((-0.01, 0.01), "tab:green") in spans                                            # equivalent
    assert "INTERIM" not in fig._suptitle.get_text()
    plt.close(fig)
    res["interim"] = True
    fig = plots.plot_contrasts(study)
    assert "INTERIM: seeds still running" in fig._suptitle.get_text()
    plt.close(fig)


def test_reading_states_established_gains_and_attributes_them_only_with_the_control():
    interval = {"mean": 0.05, "low": 0.01, "high": 0.09}
    null = {"mean": 0.01, "low": -0.02, "high": 0.04}

    def pair(a, b, top3, mean_ap):
        return {"a": a, "b": b, "seeds": [0, 1, 2], "secondary": {}, "primary": {
            "category_top3": {"t": top3, "bootstrap": top3, "verdict": "a better" if top3 is interval else
                              "no difference established"},
            "attr_map_all": {"t": mean_ap, "bootstrap": mean_ap, "verdict": "a better" if mean_ap is interval else
                             "no difference established"}}}

    result = {"seeds": {"pairs": [pair("mtl", "cat", interval, null), pair("mtl", "mtl_no_landmarks", interval, null),
                                  pair("mtl_no_landmarks", "cat", null, null)]}}
    assert analysis.landmark_supervision_gains(result) == ["category_top3"]
    lines = reports.reading(result)
    assert len(lines) == 4                                             # one per pair, then the trio's reading
    assert "+0.050" in lines[0] and "+0.010" not in lines[0]          # the established gain's mean only
    # not established never reads as "no effect": the layers' interval still allows 0.04 / 0.05 of the gain
    assert "the landmark loss adds to the gain; whether the added layers add to it too is open" in lines[3]
    assert ("(+0.010 [-0.020, +0.040] / [-0.020, +0.040]); its intervals still allow an effect of the added layers "
            "up to 80 % of" in lines[3])
    wider = result["seeds"]["pairs"][2]["primary"]["category_top3"]
    wider["bootstrap"] = {"mean": 0.01, "low": -0.03, "high": 0.045}    # the bootstrap allows more: its bound counts
    assert "[-0.030, +0.045]); its intervals still allow an effect of the added layers up to 90 % of" in \
        reports.reading(result)[3]
    assert "not the added layers" not in " ".join(lines)
    result["seeds"]["pairs"][2] = pair("mtl_no_landmarks", "cat", interval, null)    # the extra layers help too
    assert analysis.landmark_supervision_gains(result) == [] and len(reports.reading(result)) == 3
    worse = pair("mtl", "cat", null, null)
    worse["primary"]["category_top3"] = {"t": {"mean": -0.04, "low": -0.07, "high": -0.01},
                                         "bootstrap": {"mean": -0.04, "low": -0.06, "high": -0.02}, "verdict": "b better"}
    assert analysis.by_verdict(worse["primary"].items()) == {
        "a better": [], "b better": ["category_top3"], "no difference established": ["attr_map_all"]}
    (line,) = reports.reading({"seeds": {"pairs": [worse]}})
    assert "+0.040" in line and "-0.040" not in line                   # the winner's gain: cat − mtl


def test_models_figure_draws_each_baseline_once_and_keeps_close_names_apart():
    import matplotlib.pyplot as plt

    from vfu_nb.plots import study as plots

    result = fake_study()
    result["baselines"]["default"] = {"chance": {"attr_map_all": 0.121}, "attribute_prior": {"attr_map_all": 0.112},
                                      "attribute_prior_given_category": {"attr_map_all": 0.406}}
    fig = plots.plot_models(result)
    ax = fig.axes[1]
    assert sorted(line.get_ydata()[0] for line in ax.lines if line.get_linestyle() != "None"
                  and len(set(line.get_ydata())) == 1 and len(line.get_ydata()) == 2) == [0.112, 0.121, 0.406]
    names = {t.get_text(): t.xy[1] for t in ax.texts}
    assert set(names) == {"chance", "attribute prior", "attribute prior given\nthe true category"}   # curves' names
    assert names["chance"] - names["attribute prior"] >= 0.05 - 1e-9           # 0.009 apart in data: pushed apart
    plt.close(fig)


def test_learning_curve_figure_shows_models_gains_and_baselines():
    import matplotlib.pyplot as plt

    from vfu_nb.plots import study as plots

    gain = {"t": {"mean": 0.05, "low": 0.01, "high": 0.09}, "bootstrap": {"mean": 0.05, "low": 0.02, "high": 0.08},
            "verdict": "a better"}
    points = [{"fraction": f, "summary": [{"model": m, "metric": k, "n": 3, "mean": v + f / 10, "std": 0.01}
                                          for m, v in (("mtl", 0.6), ("cat", 0.5)) for k in analysis.PRIMARY],
               "pairs": [{"a": "mtl", "b": "cat", "seeds": [0, 1, 2], "primary": {k: gain for k in analysis.PRIMARY}}]}
              for f in (0.1, 0.5, 1.0)]
    result = {"learning_curve": {"data": "default", "points": points},
              "baselines": {"default": {"class_prior": {"category_top3": 0.3}, "chance": {"category_top3": 0.06}}}}
    fig = plots.plot_learning_curve(result)
    (top3, _), (gain3, _) = fig.axes[0:2], fig.axes[2:4]
    mtl = next(c for c in top3.containers if c.get_label() == "mtl").lines[0]
    assert np.allclose(mtl.get_ydata(), [0.61, 0.65, 0.7]) and list(mtl.get_xdata()) == [0.1, 0.5, 1.0]
    assert {t.get_text() for t in top3.texts} == {"class prior", "chance"}
    assert np.allclose(next(c for c in gain3.containers if c.get_label() == "mtl − cat").lines[0].get_ydata(), 0.05)
    plt.close(fig)


def test_grid_edges_names_models_whose_choice_is_at_the_end_of_the_grid():
    result = {"grid": {"lr": [1e-3, 3e-4]}, "chosen": {"mtl": {"lr": 1e-3}, "cat": {"lr": 1e-3}}}
    assert analysis.grid_edge_models(result) == {"largest": ["mtl", "cat"]}
    assert "`mtl`, `cat`" in reports.grid_edges(result)
    result["grid"]["lr"] = [3e-4, 1e-3, 3e-3]
    assert analysis.grid_edge_models(result) == {} and reports.grid_edges(result) == ""
    result["chosen"]["cat"] = {"lr": 3e-4}
    assert analysis.grid_edge_models(result) == {"smallest": ["cat"]}
    assert analysis.grid_edge_models({"grid": {"lr": [1e-3]}, "chosen": {"mtl": {"lr": 1e-3}}}) == {}   # no grid


def test_first_study_analysis_reads_the_seeds_its_parts_train(plan, monkeypatch):
    """A learning curve or dial with ``first: 1`` trains seeds 1.. (Plan.seed_range): the analysis asks for those."""
    plan.learning_curve["first"], plan.dial["first"] = 1, 1
    chosen = {"mtl": {"lr": 1e-3, "backbone": "vgg16_bn"}, "cat": {"lr": 1e-3, "backbone": "vgg16_bn"}}
    asked = []
    monkeypatch.setattr(analysis, "choose_settings", lambda plan_, partial=False: (chosen, []))
    monkeypatch.setattr(analysis, "load_runs", lambda plan_, specs: asked.extend(specs) or [])
    monkeypatch.setattr(analysis, "baselines_for", lambda plan_, **kw: {})
    analysis.study_results(plan, log=lambda line: None)
    trained = {s.key for s in plan.later_specs(chosen)}
    for part in ("learning_curve", "dial"):
        seeds = {s.seed for s in asked if s.part == part}
        assert seeds == {1, 2} and {s.key for s in asked if s.part == part} <= trained, part


def test_readme_block_learning_curve_rows_give_seeds_and_bold_only_established_gains():
    result = fake_study()
    pair = result["seeds"]["pairs"][0]
    null = {"t": {"mean": 0.01, "low": -0.02, "high": 0.04}, "bootstrap": {"mean": 0.01, "low": -0.01, "high": 0.03},
            "verdict": "no difference established"}
    result["learning_curve"] = {"data": "default", "points": [
        {"fraction": 0.1, "summary": [], "pairs": [{**pair, "seeds": [0, 1, 2], "primary": {
            "category_top3": pair["primary"]["category_top3"], "attr_map_all": null}}]},
        {"fraction": 0.5, "summary": [], "pairs": []}]}
    block = reports.readme_block(result)
    assert "| 10% | 3 | **+0.050 [+0.010, +0.090]** | +0.010 [-0.020, +0.040] |" in block
    assert "| 50% | 0 | – | – |" in block


def test_learning_curve_reading_names_the_sizes_with_and_without_an_established_gain():
    def result(mean, verdict):
        return {"t": {"mean": mean, "low": None, "high": None}, "verdict": verdict}

    points = [{"fraction": f, "pairs": [{"a": "mtl", "b": "cat", "seeds": [0, 1, 2],
                                         "primary": {"category_top3": result(gain, verdict)}}]}
              for f, gain, verdict in ((0.1, 0.02, "no difference established"), (0.5, 0.09, "a better"),
                                       (1.0, 0.05, "a better"))]
    (row,) = analysis.gains_across([(f"{p['fraction']:.0%}", q) for p in points for q in p["pairs"]])
    assert row["settings"] == {"a better": ["50%", "100%"], "b better": [], "no difference established": ["10%"]}
    assert (row["a"], row["b"], row["metric"], row["largest"], row["largest_mean"]) == (
        "mtl", "cat", "category_top3", "50%", 0.09)
    lines = reports.learning_curve_reading({"learning_curve": {"data": "default", "points": points}})
    assert len(lines) == 2 and all(x in lines[0] for x in ("50%", "100%", "10%", "+0.090"))   # then the caveat
    assert reports.learning_curve_reading({}) == []


def test_dial_reading_names_each_benchmark_and_the_default_setting():
    def pair(mean, verdict):
        return {"a": "mtl", "b": "cat", "seeds": [0, 1, 2],
                "primary": {"attr_map_all": {"t": {"mean": mean, "low": None, "high": None}, "verdict": verdict}}}

    rows = [{"settings": {"n": 100}, "pair": pair(0.01, "no difference established")},
            {"settings": {"n": 100, "geometry_informativeness": 1.0}, "pair": pair(0.04, "a better")}]
    default = DEFAULT_GEOMETRY_INFORMATIVENESS
    names = [reports.dial_name(r) for r in rows]
    assert names == [f"geometry informativeness {default} (default)", "geometry informativeness 1.0"]
    (row,) = analysis.gains_across([(name, r["pair"]) for name, r in zip(names, rows)])
    assert row["settings"] == {"a better": [names[1]], "b better": [], "no difference established": [names[0]]}
    assert row["largest"] == names[1] and row["largest_mean"] == 0.04
    lines = reports.dial_reading({"dial": rows})
    assert len(lines) == 2 and all(x in lines[0] for x in (*names, "+0.040"))                  # then the caveat
    assert reports.dial_reading({}) == []


def test_readme_dial_rows_give_the_gain_and_the_means_beside_each_trees_geometry_baseline():
    result = fake_study()
    pair = result["seeds"]["pairs"][0]
    result["dial"] = [{"data": tag, "settings": settings, "pair": pair,
                       "summary": [{"model": m, "metric": k, "n": 2, "mean": v + shift, "std": 0.01}
                                   for m, v in (("mtl", 0.8), ("cat", 0.7)) for k in analysis.PRIMARY]}
                      for tag, settings, shift in (("default", {}, 0.0), ("g1", {"geometry_informativeness": 1.0}, 0.1))]
    result["baselines"]["g1"] = {"geometry_knn": {"category_top3": 0.69, "attr_map_all": 0.28}}
    block = reports.readme_block(result)
    g1 = next(line for line in block.splitlines() if line.startswith("| geometry informativeness 1.0 |"))
    assert g1.endswith("| 0.900 / 0.800 / 0.690 | 0.900 / 0.800 / 0.280 |")
    assert "+0.050 [+0.010, +0.090] / [+0.010, +0.090]: **established**" in g1
    default = next(line for line in block.splitlines() if "(default) |" in line)
    assert default.endswith("| 0.800 / 0.700 / – | 0.800 / 0.700 / – |")      # no k-NN on the default tree here


def test_drifted_runs_names_exported_runs_whose_settings_the_plan_no_longer_gives(tmp_path):
    plan = Plan.load({**PLAN, "results": str(tmp_path / "results"), "runs": str(tmp_path / "runs")})
    spec = plan.tuning_specs()[0]
    dest = plan.results_dir / "runs" / spec.key
    dest.mkdir(parents=True)
    (dest / "config.json").write_text(json.dumps({k: v for k, v in plans.portable_config(spec.config).items()
                                                  if k != "min_epochs"}))
    assert plans.drifted_runs(plan) == []                       # min_epochs absent = its default, as planned
    edited = Plan.load({**PLAN, "base": {**PLAN["base"], "patience": 5, "min_epochs": 10},
                        "results": str(tmp_path / "results"), "runs": str(tmp_path / "runs")})
    assert plans.drifted_runs(edited) == [f"{spec.key}: patience 3 -> 5", f"{spec.key}: min_epochs 0 -> 10"]


def test_the_committed_results_were_trained_with_the_committed_plan():
    assert plans.drifted_runs(Plan.load(plans.REPO / "results" / "plan.yaml")) == []


# ---------------------------------------------------------------------------------------------------------
# Study 2's plan mechanics: seeds disjoint from tuning, a selection score over both primary metrics, a grid
# that extends while an edge wins, the negative control seed by seed, and reuse of matching runs


PLAN2 = {**PLAN, "tuning": {**PLAN["tuning"], "grid": {"lr": [5e-4, 1e-3], "backbone": ["vgg16_bn"]},
                            "extend": {"factor": 2, "max": 2}, "score": ["category_top3", "attr_map_all"]},
         "seeds": {"data": "default", "first": 1, "models": {"mtl": 2, "cat": 2}, "pairs": [["mtl", "cat"]]},
         "control": {"data": "g1", "models": ["mtl", "cat"], "first": 1, "seeds": 2, "pairs": [["mtl", "cat"]]},
         "learning_curve": {}, "dial": {}}


@pytest.fixture
def plan2(tmp_path):
    return Plan.load({**PLAN2, "results": str(tmp_path / "results"), "runs": str(tmp_path / "runs"),
                      "figures": str(tmp_path / "figures")})


def export2(plan, spec, top3, mAP):
    export(plan, spec, val=top3)
    path = plan.results_dir / "runs" / spec.key / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["val"]["attr_map_all"] = mAP
    store.write_atomic(path, json.dumps(metrics))


def test_selection_score_is_the_mean_of_the_declared_metrics():
    m = {"select_metric": "category_top3", "val": {"category_top3": 0.8, "attr_map_all": 0.4}}
    assert plans.selection_score(m) == 0.8
    assert plans.selection_score(m, ["category_top3", "attr_map_all"]) == pytest.approx(0.6)
    assert math.isnan(plans.selection_score({"val": {"category_top3": 0.8}}, ["category_top3", "attr_map_all"]))


def test_final_and_control_seeds_start_after_the_tuning_seed_and_go_seed_by_seed(plan2):
    chosen = {"mtl": {"lr": 1e-3, "backbone": "vgg16_bn"}, "cat": {"lr": 5e-4, "backbone": "vgg16_bn"}}
    later = plan2.later_specs(chosen)
    assert [(s.part, s.data, s.model, s.seed) for s in later] == [
        ("seeds", "default", "mtl", 1), ("seeds", "default", "cat", 1), ("control", "g1", "mtl", 1),
        ("control", "g1", "cat", 1), ("seeds", "default", "mtl", 2), ("seeds", "default", "cat", 2),
        ("control", "g1", "mtl", 2), ("control", "g1", "cat", 2)]
    assert plan2.tuning_seed == 0 and all(s.seed != plan2.tuning_seed for s in later)
    assert plan2.data_tags() == ["default", "g1"]


def test_the_grid_extends_while_an_edge_wins_and_the_choice_waits_for_it(plan2):
    for spec in plan2.tuning_specs():
        # mtl: the largest rate wins on the mean of both metrics (though not on top-3 alone); cat: the smallest
        top3, mAP = {("mtl", 5e-4): (0.80, 0.30), ("mtl", 1e-3): (0.78, 0.40),
                     ("cat", 5e-4): (0.70, 0.40), ("cat", 1e-3): (0.60, 0.40)}[(spec.model, spec.config["lr"])]
        export2(plan2, spec, top3, mAP)
    assert plans.tuning_lrs(plan2) == {"mtl": [5e-4, 1e-3, 2e-3], "cat": [2.5e-4, 5e-4, 1e-3]}
    chosen, _ = plans.choose_settings(plan2, partial=True)
    assert chosen == {}                                                  # both wait for their new rate
    assert {s.key for s in plans.pending(plan2)} == {"default/mtl/vgg16_bn_lr0.002_f1/seed0",
                                                     "default/cat/vgg16_bn_lr0.00025_f1/seed0"}
    by_key = {s.key: s for s in plan2.tuning_specs(plans.tuning_lrs(plan2))}
    export2(plan2, by_key["default/mtl/vgg16_bn_lr0.002_f1/seed0"], 0.5, 0.3)       # interior now: stops
    export2(plan2, by_key["default/cat/vgg16_bn_lr0.00025_f1/seed0"], 0.9, 0.5)     # edge again: once more
    assert plans.tuning_lrs(plan2) == {"mtl": [5e-4, 1e-3, 2e-3], "cat": [1.25e-4, 2.5e-4, 5e-4, 1e-3]}
    assert list(plans.choose_settings(plan2, partial=True)[0]) == ["mtl"]
    by_key = {s.key: s for s in plan2.tuning_specs(plans.tuning_lrs(plan2))}
    export2(plan2, by_key["default/cat/vgg16_bn_lr0.000125_f1/seed0"], 0.95, 0.5)   # edge wins, max 2 reached
    assert plans.tuning_lrs(plan2)["cat"] == [1.25e-4, 2.5e-4, 5e-4, 1e-3]
    chosen, rows = plans.choose_settings(plan2)
    assert chosen == {"mtl": {"backbone": "vgg16_bn", "lr": 1e-3}, "cat": {"backbone": "vgg16_bn", "lr": 1.25e-4}}
    assert len(rows) == 7


def test_import_reused_copies_only_runs_with_the_same_key_and_settings(plan2, tmp_path):
    old = Plan.load({**PLAN, "results": str(tmp_path / "old"), "runs": str(tmp_path / "old_runs")})
    specs = {s.key: s for s in old.tuning_specs()}
    same = specs["default/mtl/vgg16_bn_lr0.001_f1/seed0"]
    export(old, same, val=0.7)
    other = specs["default/cat/vgg16_bn_lr0.001_f1/seed0"]
    export(old, Plan.load({**PLAN, "base": {**PLAN["base"], "patience": 9}, "results": str(tmp_path / "old")}
                          ).tuning_specs()[2], val=0.7)                      # cat at lr 1e-3, other patience
    plan2.reuse = [str(tmp_path / "old")]
    log = []
    assert runner.import_reused(plan2, log.append) == [same.key]
    copied = plan2.results_dir / "runs" / same.key
    assert json.loads((copied / "origin.json").read_text())["reused_from"].endswith(f"old/runs/{same.key}")
    assert (copied / "metrics.json").read_text() == (old.results_dir / "runs" / same.key / "metrics.json").read_text()
    assert plans.exported(plan2, other.key) is None and "reused 1 finished runs" in log[0]
    assert runner.import_reused(plan2, log.append) == []                  # nothing twice
    (old.results_dir / "runs" / other.key / "config.json").write_text('{"model": "ca')
    with pytest.raises(store.CorruptResultError, match=rf"old/runs/{other.key}/config.json is damaged"):
        runner.import_reused(plan2, log.append)                           # one line naming the file, no traceback


PRE = {"primary_metrics": ["category_top3", "attr_map_all"], "alpha": 0.05,
       "margins": {"category_top3": 0.02, "attr_map_all": 0.02},
       "primary_family": {"mtl_vs_cat": {"data": "default", "weights": {"mtl": 1, "cat": -1}},
                          "landmark_loss": {"data": "default", "weights": {"mtl": 1, "cat": -1}},
                          "attention": {"data": "default", "weights": {"mtl": 0.5, "cat": -0.5}},
                          "interaction": {"data": "default", "weights": {"mtl": 1, "cat": -1}},
                          "control_mtl_vs_cat": {"data": "g1", "weights": {"mtl": 1, "cat": -1}}},
       "secondary_family": {"cat_vs_mtl": {"data": "default", "weights": {"cat": 1, "mtl": -1}}}}


def test_the_preregistered_report_decides_every_contrast_and_writes_its_readme_block(plan2, tmp_path):
    """Fake runs where mtl beats cat by 0.3 top-3 on the default tree and equals it on the control tree: the gain is
    established, the control equivalent (same predictions), and the README block says so from study.json."""
    plan2.preregistration, plan2.seeds["models"], plan2.control["seeds"] = PRE, {"mtl": 5, "cat": 5}, 5
    plan2.tuning["extend"] = None                       # a two-value grid: no extension here
    n = 90
    rng = np.random.default_rng(0)
    attributes = np.where(rng.random((n, 6)) < 0.3, 1, -1)
    for tag in ("default", "g1"):
        (plan2.results_dir / "labels").mkdir(parents=True, exist_ok=True)
        np.savez(plan2.results_dir / "labels" / f"{tag}.npz", index=np.arange(n), category=np.zeros(n, int),
                 attributes=attributes, attribute_types=np.ones(6, int))
    for spec in plan2.tuning_specs():
        export2(plan2, spec, 0.7 if spec.config["lr"] == 1e-3 else 0.6, 0.4)
    chosen, _ = plans.choose_settings(plan2, partial=True)
    assert set(chosen) == {"mtl", "cat"}
    control_preds, run_top3 = {}, {}
    for spec in plan2.later_specs(chosen):
        skill = 0.8 if spec.model == "mtl" and spec.part == "seeds" else 0.5
        hits = rng.random(n) < skill
        preds = {"category_rank": np.where(hits, 0, 5).astype(np.int16),
                 "attribute_logits": (attributes * (1.0 if spec.model == "mtl" else 0.3)
                                      + rng.normal(size=attributes.shape)).astype(np.float32),
                 "saliency_lift": rng.normal(1.0, 0.2, n).astype(np.float32),
                 "saliency_pointing": (rng.random(n) < 0.3).astype(np.float32),
                 "region_fraction": np.full(n, 0.2, np.float32)}
        if spec.model == "mtl":
            preds.update(attention_lift=rng.normal(1.5, 0.2, n).astype(np.float32),
                         attention_pointing=(rng.random(n) < 0.5).astype(np.float32))
        if spec.part == "control":                       # the control: cat sees exactly mtl's predictions
            preds = control_preds.setdefault(spec.seed, preds) if spec.model == "mtl" else \
                {**control_preds[spec.seed], **{k: v for k, v in preds.items() if k.startswith("saliency")}}
        reused = spec.model == "cat" and spec.seed == 1 and spec.part == "seeds"   # as a reused first-study run
        if reused:
            preds = {k: v for k, v in preds.items() if k in ("category_rank", "attribute_logits")}
        export(plan2, spec, preds=preds, test={"category_top3": float(np.mean(preds["category_rank"] < 3))})
        run_top3[(spec.part, spec.model, spec.seed)] = float(np.mean(preds["category_rank"] < 3))
        if reused:
            (plan2.export_dir(spec.key) / "origin.json").write_text('{"reused_from": "results/runs/..."}')
    (tmp_path / "README.md").write_text(f"intro\n{reports.STUDY2_BEGIN}\nold\n{reports.STUDY2_END}\nrest\n")
    with pytest.raises(store.StudyInputError, match=r"the baselines of data tree default are neither in .*nothing "
                                                    r"was written"):
        reports.report(plan2, log=lambda line: None)     # the levels table shows both trees' baselines
    assert not (plan2.results_dir / "study.json").exists()
    (plan2.results_dir / "baselines").mkdir()
    for tag in ("default", "g1"):
        stored = {"data": tag, "settings": plan2.data[tag], "split": "test",
                  "baselines": {"chance": {"category_top3": 0.06}}}
        store.write_atomic(store.baselines_path(plan2.results_dir, tag), json.dumps(stored))
    result = reports.report(plan2, log=lambda line: None)
    assert result["baselines"]["g1"] == {"chance": {"category_top3": 0.06}}
    rows = {(r["contrast"], r["metric"]): r["result"] for r in result["primary_family"]}
    assert rows[("mtl_vs_cat", "category_top3")]["outcome"] == "established"
    assert rows[("mtl_vs_cat", "category_top3")]["direction"] == 1 and rows[("mtl_vs_cat", "category_top3")]["n"] == 5
    assert rows[("control_mtl_vs_cat", "category_top3")]["outcome"] == "equivalent"
    assert rows[("control_mtl_vs_cat", "category_top3")]["mean"] == 0
    # the check without reused runs: the contrasts that use cat's reused seed 1, again on seeds 2..5 (Holm among
    # themselves); the control, which uses no reused run, is not repeated
    fresh = {(r["contrast"], r["metric"]): r for r in result["fresh_seeds_family"]}
    assert {c for c, _ in fresh} == {"mtl_vs_cat", "landmark_loss", "attention", "interaction"}
    again = fresh[("mtl_vs_cat", "category_top3")]
    assert (again["n"], again["planned"], rows[("mtl_vs_cat", "category_top3")]["n"]) == (4, 4, 5)
    assert again["result"]["mean"] == pytest.approx(
        np.mean([run_top3[("seeds", "mtl", s)] - run_top3[("seeds", "cat", s)] for s in range(2, 6)]))
    assert not again["result"]["interim"]
    assert [r["result"]["p_holm"] for r in fresh.values()] == stats.holm([r["result"]["p"] for r in fresh.values()])
    assert result["runs"]["exported"] == 4 + 20
    where = {(r["data"], r["model"], r["measure"]): r for r in result["where"]["rows"]}
    assert where[("default", "mtl", "attention_lift")]["result"]["outcome"] == "established"
    assert ("default", "cat", "attention_lift") not in where
    assert where[("default", "cat", "saliency_lift")]["runs"] == 4                # seed 1 has no measure
    assert where[("default", "mtl", "saliency_lift")]["runs"] == 5
    assert (plan2.resolve(plan2.figures) / reports.STUDY2_FIGURE).exists()
    block = reports.preregistered_block(result)
    assert reports.update_readme(block, tmp_path / "README.md", reports.STUDY2_BEGIN, reports.STUDY2_END)
    text = (tmp_path / "README.md").read_text()
    assert text.startswith("intro\n") and text.endswith("rest\n") and "old" not in text
    top3 = analysis.mechanism(result)[0]
    assert top3["metric"] == "category_top3" and top3["results"]["mtl_vs_cat"] == rows[("mtl_vs_cat", "category_top3")]
    assert (top3["reading"], top3["source"], top3["control"]) == ("gain", "both", "equivalent")
    sentences = reports.mechanism_reading(result)
    gain = rows[("mtl_vs_cat", "category_top3")]
    assert all(f"{gain[k]:+.3f}" in sentences[0] for k in ("mean", "low", "high"))   # the numbers of study.json
    assert "equivalent" in sentences[0] and "not measured yet" not in block
    assert "equivalent to 0 within the margin when the local evidence is drawn away" in sentences[1]
    assert "**Without the reused runs (a check, not preregistered).**" in block
    assert reports.contrast_table("primary", result["fresh_seeds_family"]) in block
    assert "vanishes" not in " ".join(sentences)          # equivalence bounds the control's gain, nothing more
    # every run's metrics.json is held to its predictions, as in the first study: an edited number stops the report
    metrics = plan2.results_dir / "runs" / plan2.later_specs(chosen)[0].key / "metrics.json"
    edited = json.loads(metrics.read_text())
    edited["test"]["category_top3"] += 0.05
    metrics.write_text(json.dumps(edited))
    with pytest.raises(store.CorruptResultError, match=r"metrics.json gives test category_top3 .* but its "
                                                       r"predictions.npz gives .*\(an edited file\?\)"):
        reports.report(plan2, log=lambda line: None)


def test_the_committed_readme_study2_block_matches_the_committed_study2_results():
    repo = Path(__file__).resolve().parents[1]
    result = json.loads((repo / "results" / "v2" / "study.json").read_text())
    text = (repo / "README.md").read_text()
    block = text.split(reports.STUDY2_BEGIN, 1)[1].split(reports.STUDY2_END, 1)[0].strip("\n")
    assert block == reports.preregistered_block(result)
    assert "preregistration" in result and result["changelog"] == Plan.load(repo / "results/v2/plan.yaml").changelog


def test_where_lines_of_a_model_with_one_seed_give_its_mean_and_no_interval():
    """One seed has no standard error: study.json stores the interval as null, the row shows the mean alone."""
    row = {"data": "default", "model": "mtl", "measure": "attention_lift", "mean": 1.2, "runs": 1, "pointing": 0.3,
           "region_fraction": 0.2, "result": {"low": None, "high": None, "outcome": "inconclusive"}}
    line = reports.where_lines({"where": {"rows": [row]}})[0]
    assert "1.200" in line and "0.300" in line and "[" not in line and "not tested yet" in line
    assert "inconclusive" not in line                                   # one seed is no test
    row.update(runs=3, planned=6, mean=1.1, result={"low": 0.02, "high": 0.18, "outcome": "established",
                                                     "p_holm": 0.03, "interim": True})
    line = reports.where_lines({"where": {"rows": [row]}})[0]
    assert "`mtl` (3 of 6 seeds)" in line and "interim, 1.100 [1.020, 1.180]; a difference from 1 established" in line


def test_the_where_family_is_interim_while_a_planned_run_is_unmeasured_even_without_a_row():
    rng = np.random.default_rng(0)

    def run():
        return {"attention_lift": 1 + rng.normal(0, 0.1, 50), "saliency_lift": 0.8 + rng.normal(0, 0.1, 50),
                "attention_pointing": rng.integers(0, 2, 50), "saliency_pointing": rng.integers(0, 2, 50),
                "region_fraction": np.full(50, 0.2)}

    runs = {"default": {("mtl", 1): run(), ("mtl", 2): run()}}
    done = analysis.where_attention_falls(runs, {"default": {}}, {}, measurable={("default", "mtl"): {1, 2}})
    assert [r["planned"] for r in done["rows"]] == [2, 2] and not done["rows"][0]["result"]["interim"]
    waiting = analysis.where_attention_falls(runs, {"default": {}}, {},
                                             measurable={("default", "mtl"): {1, 2}, ("default", "cat"): {1, 2}})
    assert all(r["result"]["interim"] for r in waiting["rows"])         # cat has no run yet, so no row


def test_the_absolute_levels_table_puts_each_trees_models_beside_its_baselines():
    def rows(model, top3, mAP, n=3):
        return [{"model": model, "metric": "category_top3", "n": n, "mean": top3, "std": 0.01},
                {"model": model, "metric": "attr_map_all", "n": n, "mean": mAP, "std": 0.02}]

    study = {"summary": {"seeds": rows("mtl", 0.75, 0.45) + rows("cat", 0.68, 0.39),
                         "control": rows("mtl", 0.59, 0.34, n=1)},
             "summary_trees": {"seeds": "default", "control": "displaced"},
             "reused_seeds": {"seeds": {"mtl": [], "cat": [1, 2, 3]}, "control": {"mtl": [4]}},
             "baselines": {"default": {"chance": {"category_top3": 0.06, "attr_map_all": 0.12},
                                       "class_prior": {"category_top3": 0.3, "attr_map_all": None}}}}
    assert reports.level_lines(study) == [
        "| default | `mtl` (3 seeds) | 0.750 ± 0.010 | 0.450 ± 0.020 |",
        "| default | `cat` (3 seeds; seeds 1–3 from the first study) | 0.680 ± 0.010 | 0.390 ± 0.020 |",
        "| default | baseline: class prior | 0.300 | – |",
        "| default | baseline: chance | 0.060 | 0.120 |",
        "| displaced | `mtl` (1 seed; seed 4 from the first study) | 0.590 | 0.340 |"]
    assert reports._seed_list([5, 1, 3]) == "seeds 1, 3, 5"


def test_mechanism_reads_the_factorial_and_the_control_from_their_outcomes():
    """analysis.mechanism: which factor carries an established gain of mtl over cat, and what the control shows."""
    def study(**outcomes):
        family = [{"contrast": c, "metric": "category_top3",
                   "result": {"outcome": o, "direction": d, "mean": 0.05 * d, "low": 0.01, "high": 0.09,
                              "margin": 0.02, "p_holm": 0.01, "p_tost_holm": 0.5, "low90": 0.0, "high90": 0.0}
                   if o else None}
                  for c, (o, d) in outcomes.items()]
        return {"preregistration": {"primary_metrics": ["category_top3"]}, "primary_family": family}

    est, neg, inc, eq = ("established", 1), ("established", -1), ("inconclusive", 0), ("equivalent", 0)
    (row,) = analysis.mechanism(study(mtl_vs_cat=est, landmark_loss=est, attention=inc, control_mtl_vs_cat=neg))
    assert (row["reading"], row["source"], row["control"], row["control_direction"]) == (
        "gain", "landmark_loss", "established", -1)
    (row,) = analysis.mechanism(study(mtl_vs_cat=est, landmark_loss=inc, attention=inc, control_mtl_vs_cat=eq))
    assert row["reading"] == "no_source"
    (row,) = analysis.mechanism(study(mtl_vs_cat=neg, landmark_loss=est, attention=est, control_mtl_vs_cat=eq))
    assert row["reading"] == "no_gain"                                 # a gain of cat is nothing to explain here
    # no established mtl - cat gain, yet a main effect is established: the reading says so
    unexplained = study(mtl_vs_cat=inc, landmark_loss=est, attention=inc, control_mtl_vs_cat=inc)
    assert analysis.mechanism(unexplained)[0]["source"] == "landmark_loss"
    assert reports.mechanism_reading(unexplained)[1] == (
        "So in top-3 category accuracy the gain of `mtl` over `cat` is not established, but the main effect of the "
        "landmark loss is: averaged over the networks with and without the attention, training with the landmark "
        "loss helps.")
    nothing = study(mtl_vs_cat=inc, landmark_loss=inc, attention=inc, control_mtl_vs_cat=inc)
    assert reports.mechanism_reading(nothing)[1] == (
        "So in top-3 category accuracy there is no established gain of `mtl` over `cat` to explain here.")
    (row,) = analysis.mechanism(study(mtl_vs_cat=est, landmark_loss=est))
    assert row["reading"] is None and row["results"]["attention"] is None   # not all measured: no reading yet
    assert len(reports.mechanism_reading(study(mtl_vs_cat=est, landmark_loss=est))) == 1
    final = reports.mechanism_reading(study(mtl_vs_cat=est, landmark_loss=est, attention=inc, control_mtl_vs_cat=neg))
    assert len(final) == 2 and final[1].startswith("So in top-3 category accuracy the gain goes with the landmark loss")
    interim = study(mtl_vs_cat=est, landmark_loss=est, attention=inc, control_mtl_vs_cat=neg)
    interim["primary_family"][3]["result"]["interim"] = True           # the control has fewer seeds than planned
    assert analysis.mechanism(interim)[0]["interim"] and not analysis.mechanism(study(
        mtl_vs_cat=est, landmark_loss=est, attention=inc, control_mtl_vs_cat=neg))[0]["interim"]
    assert reports.mechanism_reading(interim)[1].startswith(
        "So far (interim: not every planned seed has finished) in top-3 category accuracy the gain goes with")
    # an established interaction qualifies the main effect; its sign says which way
    for direction, words in ((-1, "established and negative: the landmark loss adds less to the network with the "
                                  "attention"), (1, "established and positive: the landmark loss adds more")):
        qualified = study(mtl_vs_cat=est, landmark_loss=est, attention=inc, control_mtl_vs_cat=inc,
                          interaction=("established", direction))
        assert analysis.mechanism(qualified)[0]["interaction_direction"] == direction
        lines = reports.mechanism_reading(qualified)
        assert len(lines) == 3 and lines[2].startswith(f"In top-3 category accuracy the interaction is {words}")
    assert len(reports.mechanism_reading(study(mtl_vs_cat=est, landmark_loss=est, attention=inc,
                                               control_mtl_vs_cat=inc, interaction=inc))) == 2
    equivalent = study(mtl_vs_cat=est, landmark_loss=est, attention=inc, control_mtl_vs_cat=inc, interaction=eq)
    assert "do not interact beyond the margin" in reports.mechanism_reading(equivalent)[2]


def test_interim_outcomes_say_so_until_the_planned_seeds_have_finished():
    repo = Path(__file__).resolve().parents[1]
    plan = Plan.load(repo / "results" / "v2" / "plan.yaml")
    assert analysis.planned_seeds(plan, "default", ["mtl", "cat"]) == 10
    assert analysis.planned_seeds(plan, "default", ["mtl_pool", "cat"]) == 5
    assert analysis.planned_seeds(plan, "displaced", ["mtl", "cat"]) == 10
    assert analysis.planned_seeds(plan, "displaced", ["mtl_no_attention", "cat"]) == 0
    study = json.loads((repo / "results" / "v2" / "study.json").read_text())
    for family in ("primary_family", "secondary_family"):       # Holm: a family is interim while any test waits
        waiting = any(row["n"] < row["planned"] for row in study[family])
        for row in study[family]:
            assert row["planned"] == analysis.planned_seeds(plan, row["data"], row["weights"])
            if row["result"]:
                assert row["result"]["interim"] == waiting
    secondary = {(r["contrast"], r["metric"]): r for r in study["secondary_family"]}
    bi = secondary[("mtl_bi_vs_cat", "category_top3")]
    if bi["n"] == bi["planned"] and waiting:                         # its own seeds done, its family's not
        assert bi["result"]["interim"] and "interim, " in reports.outcome_phrase(bi["result"])
    result = {"outcome": "established", "mean": 0.05, "low": 0.01, "high": 0.09, "margin": 0.02, "n": 4,
              "p_holm": 0.0123, "p_tost_holm": 0.97}
    assert reports.outcome_phrase({**result, "interim": True}).startswith("interim, established (+0.050")
    assert reports.outcome_phrase({**result, "interim": False}) == "established (+0.050 [+0.010, +0.090]; " \
                                                                   "Holm-adjusted p 0.0123)"
    # an interval that excludes 0 beside an outcome that is not established: the adjusted p says why
    assert reports.outcome_phrase({**result, "outcome": "inconclusive", "p_holm": 0.16, "p_tost_holm": 1.0}) == \
        "inconclusive (+0.050 [+0.010, +0.090]; Holm-adjusted p 0.16 for a difference, 1 for equivalence within ±0.02)"
    assert reports.outcome_phrase({**result, "outcome": "equivalent", "mean": 0.001, "low90": -0.01, "high90": 0.012,
                                   "p_tost_holm": 0.0004}) == \
        "equivalent within ±0.02 (+0.001, 90 % interval [-0.010, +0.012]; Holm-adjusted TOST p < 0.001)"
    assert reports.outcome_phrase({"outcome": "inconclusive", "mean": -0.004, "low": None, "high": None, "n": 1,
                                   "margin": None, "p_holm": None}) == "not tested yet (-0.004 from one seed: no interval)"
