"""vfu_nb.study: aggregation and paired t-intervals on fake results (hand-computed), grid resume, report."""

import json
import math

import pytest

from vfu_nb import study
from vfu_nb.study import STUDY_METRICS, differences, summarize, t_quantile_975


def rec(model, seed, **metrics):
    test = {k: None for k in STUDY_METRICS}
    test.update(metrics)
    return {"model": model, "seed": seed, "run_dir": f"x/{model}_seed{seed}", "best_epoch": 1, "val": {},
            "test": test}


# category_top3: mtl 0.80 / 0.82 / 0.84, cat 0.78 x3, mtl_no_landmarks only seed 0 (0.81) and seed 7 (unpaired)
RESULTS = [
    rec("mtl", 0, category_top3=0.80, landmark_ne_mean=0.10),
    rec("mtl", 1, category_top3=0.82, landmark_ne_mean=0.12),
    rec("mtl", 2, category_top3=0.84, landmark_ne_mean=0.14),
    rec("cat", 0, category_top3=0.78),
    rec("cat", 1, category_top3=0.78),
    rec("cat", 2, category_top3=0.78),
    rec("mtl_no_landmarks", 0, category_top3=0.81, landmark_ne_mean=0.3),
    rec("mtl_no_landmarks", 7, category_top3=0.50),
]


def row(frame, **where):
    sub = frame
    for k, v in where.items():
        sub = sub[sub[k] == v]
    assert len(sub) == 1, where
    return sub.iloc[0]


def test_t_table_and_tail():
    assert t_quantile_975(1) == pytest.approx(12.706, abs=1e-3)
    assert t_quantile_975(2) == pytest.approx(4.303, abs=1e-3)
    assert t_quantile_975(30) == pytest.approx(2.042, abs=1e-3)
    assert t_quantile_975(60) == pytest.approx(2.000, abs=1e-3)   # beyond the table: Cornish-Fisher
    assert t_quantile_975(1000) == pytest.approx(1.962, abs=1e-3)
    assert math.isnan(t_quantile_975(0))


def test_summarize_mean_and_sample_std():
    s = summarize(RESULTS)
    assert list(s.columns) == ["model", "metric", "n", "mean", "std"]
    r = row(s, model="mtl", metric="category_top3")
    # mean (0.80 + 0.82 + 0.84) / 3 = 0.82; sample std sqrt((0.02^2 + 0 + 0.02^2) / 2) = 0.02
    assert (r["n"], r["mean"], r["std"]) == (3, pytest.approx(0.82), pytest.approx(0.02))
    r = row(s, model="cat", metric="category_top3")
    assert r["mean"] == pytest.approx(0.78) and r["std"] == pytest.approx(0.0, abs=1e-12)
    r = row(s, model="cat", metric="landmark_ne_mean")      # cat has no NE: n 0, nan
    assert r["n"] == 0 and math.isnan(r["mean"]) and math.isnan(r["std"])
    r = row(s, model="mtl_no_landmarks", metric="landmark_ne_mean")   # one value: std nan
    assert r["n"] == 1 and r["mean"] == pytest.approx(0.3) and math.isnan(r["std"])


def test_differences_paired_t_interval():
    d = differences(RESULTS, "cat")
    r = row(d, model="mtl", metric="category_top3")
    # paired diffs 0.02, 0.04, 0.06: mean 0.04, sd 0.02, n 3, t_{0.975,2} = 4.3027
    # half-width = 4.3027 * 0.02 / sqrt(3) = 0.049683 -> [-0.009683, 0.089683]
    assert r["n"] == 3 and r["mean_diff"] == pytest.approx(0.04) and r["std_diff"] == pytest.approx(0.02)
    assert r["t"] == pytest.approx(4.3027)
    assert r["ci_low"] == pytest.approx(-0.0096833, abs=1e-6)
    assert r["ci_high"] == pytest.approx(0.0896833, abs=1e-6)
    assert r["seeds"] == [0, 1, 2]
    # mtl_no_landmarks vs cat: only seed 0 pairs (seed 7 has no cat run): diff 0.03, n 1, no interval
    r = row(d, model="mtl_no_landmarks", metric="category_top3")
    assert r["n"] == 1 and r["mean_diff"] == pytest.approx(0.03)
    assert math.isnan(r["std_diff"]) and math.isnan(r["ci_low"]) and math.isnan(r["ci_high"])
    # NE against cat: no finite pairs
    r = row(d, model="mtl", metric="landmark_ne_mean")
    assert r["n"] == 0 and math.isnan(r["mean_diff"])
    assert set(d["model"]) == {"mtl", "mtl_no_landmarks"}        # the baseline is not compared with itself
    # against mtl_no_landmarks: mtl seed 0 only, NE 0.10 - 0.30 = -0.20 (lower NE is better)
    d2 = differences(RESULTS, "mtl_no_landmarks")
    r = row(d2, model="mtl", metric="landmark_ne_mean")
    assert r["n"] == 1 and r["mean_diff"] == pytest.approx(-0.2)


def test_flat_records_and_frames_are_accepted():
    flat = [{"model": r["model"], "seed": r["seed"], **r["test"]} for r in RESULTS]
    a = summarize(RESULTS)
    b = summarize(flat)
    assert a.fillna(-1).equals(b.fillna(-1))
    c = summarize(study.results_frame(RESULTS))
    assert a.fillna(-1).equals(c.fillna(-1))


def test_report_files(tmp_path):
    out = study.write_report(RESULTS, tmp_path)
    data = json.loads((tmp_path / "study.json").read_text())
    assert set(data["differences"]) == {"cat", "mtl_no_landmarks"}
    assert data == json.loads(json.dumps(out))
    md = (tmp_path / "study.md").read_text()
    assert "0.8200 ± 0.0200 (n=3)" in md
    assert "0.0400 [-0.0097, 0.0897] (n=3)" in md
    assert "## Difference from `cat`" in md and "## Difference from `mtl_no_landmarks`" in md


def _fake_train(calls):
    def fake(config):
        from pathlib import Path

        calls.append((config.model, config.seed, config.resume))
        run = Path(config.run_dir)
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.json").write_text(json.dumps(config.to_dict()))
        top3 = {"mtl": 0.8, "cat": 0.7, "mtl_no_landmarks": 0.75}[config.model] + 0.01 * config.seed
        m = {"model": config.model, "seed": config.seed, "params": 1, "best_epoch": 1, "epochs_run": 1,
             "val": {"category_top3": top3}, "test": {"category_top3": top3, "landmark_ne_mean": None}}
        (run / "metrics.json").write_text(json.dumps(m))
        return m
    return fake


def test_run_study_skips_finished_runs_and_cli(tmp_path, monkeypatch, capsys):
    import vfu_nb.train as train_mod

    calls = []
    monkeypatch.setattr(train_mod, "train", _fake_train(calls))
    out = tmp_path / "study"
    (out / "cat_seed1").mkdir(parents=True)            # an interrupted run: no metrics.json -> resumed
    argv = ["--models", "mtl", "mtl_no_landmarks", "cat", "--seeds", "0", "1", "--data-root", "d", "--out",
            str(out), "--epochs", "2", "--image-size", "64", "--no-progress"]
    res = study.main(argv)
    assert len(calls) == 6 and all(resume for _, _, resume in calls)
    assert {(m, s) for m, s, _ in calls} == {(m, s) for m in ("mtl", "mtl_no_landmarks", "cat") for s in (0, 1)}
    assert len(res["runs"]) == 6 and res["config"]["epochs"] == 2 and res["config"]["image_size"] == 64
    assert "MTL vs CAT study" in capsys.readouterr().out
    # second invocation: everything finished -> nothing trained, same report
    calls.clear()
    res2 = study.main(argv)
    assert calls == []
    assert res2["summary"] == res["summary"]
    d = {(r["model"], r["metric"]): r for r in res2["differences"]["cat"]}
    assert d[("mtl", "category_top3")]["mean_diff"] == pytest.approx(0.1)
    assert d[("mtl", "category_top3")]["std_diff"] == pytest.approx(0.0, abs=1e-12)
    loaded = study.load_results(out)
    assert len(loaded) == 6
