"""Seeds x models study: run the grid, then summarise with mean ± std and paired 95% t-intervals.

    python -m vfu_nb.study --models mtl mtl_no_landmarks cat --seeds 0 1 2 --data-root DIR --out runs/study \
        [any train option, e.g. --epochs 10 --image-size 224]

Each run lives in ``<out>/<model>_seed<seed>/`` (a normal train run directory). Runs whose ``metrics.json``
exists are skipped and the others are started with ``resume=True``, so re-running the command continues an
interrupted study. The reported numbers are the **test** metrics at each run's best **val** epoch.

Outputs ``<out>/study.json`` and ``<out>/study.md``. For notebooks: :func:`load_results`,
:func:`summarize` and :func:`differences` return pandas DataFrames.

Differences are paired by seed (model and baseline trained with the same seed, hence the same initialisation
stream and data order): d_s = metric(model, s) - metric(baseline, s); interval = mean(d) ± t_{0.975, n-1}
· sd(d) / sqrt(n), with sd the sample standard deviation (ddof 1). n = 1 gives no interval (nan).
For landmark NE lower is better, so a negative difference favours the model.
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from vfu_nb.metrics import jsonable

#: Metrics of the study table (test split, best val epoch).
STUDY_METRICS = (
    "category_top3", "attr_top3_texture", "attr_top3_fabric", "attr_top3_shape", "attr_top3_part",
    "attr_top3_style", "attr_top3_all_grouped", "landmark_ne_mean",
)
LOWER_IS_BETTER = {"landmark_ne_mean"}
DEFAULT_BASELINES = ("cat", "mtl_no_landmarks")

#: Two-sided 95% Student t quantiles t_{0.975, df}, df = 1..30 (standard tables).
T_975 = {
    1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 6: 2.4469, 7: 2.3646, 8: 2.3060, 9: 2.2622,
    10: 2.2281, 11: 2.2010, 12: 2.1788, 13: 2.1604, 14: 2.1448, 15: 2.1314, 16: 2.1199, 17: 2.1098,
    18: 2.1009, 19: 2.0930, 20: 2.0860, 21: 2.0796, 22: 2.0739, 23: 2.0687, 24: 2.0639, 25: 2.0595,
    26: 2.0555, 27: 2.0518, 28: 2.0484, 29: 2.0452, 30: 2.0423,
}


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: table for 1..30; beyond, the Cornish-Fisher expansion z + (z^3 + z) / (4 df) (error < 1e-3).

    df < 1 gives nan (a single paired seed has no interval).
    """
    if df < 1:
        return float("nan")
    if df in T_975:
        return T_975[df]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


# ----------------------------------------------------------------------------------------------------------
# Collecting results


def run_dir_for(out: Path, model: str, seed: int) -> Path:
    return Path(out) / f"{model}_seed{seed}"


def load_results(out, models: Optional[Sequence[str]] = None, seeds: Optional[Sequence[int]] = None) -> list:
    """Finished runs under ``out`` (those with a metrics.json) as a list of result records.

    A record: ``{"model", "seed", "run_dir", "best_epoch", "val": {...}, "test": {...}}``.
    """
    out = Path(out)
    records = []
    for mfile in sorted(out.glob("*/metrics.json")):
        m = json.loads(mfile.read_text())
        model, seed = m.get("model"), m.get("seed")
        if model is None or seed is None:
            continue
        if models is not None and model not in models or seeds is not None and seed not in seeds:
            continue
        records.append(_record(m, mfile.parent))
    return records


def _record(metrics: dict, run_dir) -> dict:
    return {"model": metrics["model"], "seed": int(metrics["seed"]), "run_dir": str(run_dir),
            "best_epoch": metrics.get("best_epoch"), "epochs_run": metrics.get("epochs_run"),
            "params": metrics.get("params"), "val": metrics.get("val") or {}, "test": metrics.get("test") or {}}


def results_frame(results, split: str = "test", metrics: Sequence[str] = STUDY_METRICS) -> pd.DataFrame:
    """Wide frame: one row per (model, seed), one column per metric (None -> nan).

    ``results``: records as from :func:`load_results` (metrics under ``results[i][split]``), flat records
    ``{"model", "seed", metric: value, ...}``, or such a DataFrame.
    """
    if isinstance(results, pd.DataFrame):
        frame = results.copy()
    else:
        rows = []
        for r in results:
            src = r.get(split) if isinstance(r.get(split), dict) else r
            row = {"model": r["model"], "seed": int(r["seed"])}
            for k in metrics:
                v = src.get(k)
                row[k] = float("nan") if v is None else float(v)
            rows.append(row)
        frame = pd.DataFrame(rows, columns=["model", "seed", *metrics])
    for k in metrics:
        if k not in frame:
            frame[k] = float("nan")
        frame[k] = pd.to_numeric(frame[k], errors="coerce").astype(float)
    return frame[["model", "seed", *metrics]]


def _model_order(frame: pd.DataFrame) -> list:
    return list(dict.fromkeys(frame["model"]))


def summarize(results, metrics: Sequence[str] = STUDY_METRICS, split: str = "test") -> pd.DataFrame:
    """Mean and sample std (ddof 1; nan for one seed) of each metric per model.

    Returns a tidy frame with columns ``model, metric, n, mean, std`` (n counts seeds with a finite value).
    """
    frame = results_frame(results, split, metrics)
    rows = []
    for model in _model_order(frame):
        sub = frame[frame["model"] == model]
        for k in metrics:
            vals = sub[k].to_numpy(dtype=float)
            vals = vals[np.isfinite(vals)]
            n = len(vals)
            rows.append({"model": model, "metric": k, "n": n,
                         "mean": float(vals.mean()) if n else float("nan"),
                         "std": float(vals.std(ddof=1)) if n > 1 else float("nan")})
    return pd.DataFrame(rows, columns=["model", "metric", "n", "mean", "std"])


def differences(results, baseline: str, metrics: Sequence[str] = STUDY_METRICS, split: str = "test",
                confidence: float = 0.95) -> pd.DataFrame:
    """Paired-by-seed differences (model - baseline) with a 95% t-interval, for every other model.

    Columns: ``model, baseline, metric, n, mean_diff, std_diff, t, ci_low, ci_high, seeds``. Only seeds
    where both values are finite are paired. n = 1 gives std/interval nan; n = 0 gives nan throughout.
    """
    if confidence != 0.95:
        raise ValueError("only 95% intervals are tabulated (scipy-free)")
    frame = results_frame(results, split, metrics)
    base = frame[frame["model"] == baseline].drop_duplicates("seed", keep="last").set_index("seed")
    rows = []
    for model in _model_order(frame):
        if model == baseline:
            continue
        sub = frame[frame["model"] == model].drop_duplicates("seed", keep="last").set_index("seed")
        common = sorted(set(sub.index) & set(base.index))
        for k in metrics:
            d = np.array([sub.at[s, k] - base.at[s, k] for s in common], dtype=float)
            ok = np.isfinite(d)
            d = d[ok]
            seeds = [s for s, good in zip(common, ok) if good]
            n = len(d)
            mean = float(d.mean()) if n else float("nan")
            sd = float(d.std(ddof=1)) if n > 1 else float("nan")
            t = t_quantile_975(n - 1)
            half = t * sd / math.sqrt(n) if n > 1 else float("nan")
            rows.append({"model": model, "baseline": baseline, "metric": k, "n": n, "mean_diff": mean,
                         "std_diff": sd, "t": t, "ci_low": mean - half, "ci_high": mean + half, "seeds": seeds})
    return pd.DataFrame(rows, columns=["model", "baseline", "metric", "n", "mean_diff", "std_diff", "t",
                                       "ci_low", "ci_high", "seeds"])


# ----------------------------------------------------------------------------------------------------------
# Reporting


def _fmt(v, digits=4) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _md_table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def summary_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Pivot of :func:`summarize`: rows = models, columns = metrics, cells "mean ± std (n)"."""
    cells = summary.assign(cell=[f"{_fmt(m)} ± {_fmt(s)} (n={n})" if n > 1 else f"{_fmt(m)} (n={n})"
                                 for m, s, n in zip(summary["mean"], summary["std"], summary["n"])])
    table = cells.pivot(index="model", columns="metric", values="cell")
    return table.loc[list(dict.fromkeys(summary["model"])), list(dict.fromkeys(summary["metric"]))]


def to_markdown(summary: pd.DataFrame, diffs: dict, title: str = "Study", note: str = "") -> str:
    metrics = list(dict.fromkeys(summary["metric"]))
    models = list(dict.fromkeys(summary["model"]))
    out = [f"# {title}", ""]
    if note:
        out += [note, ""]
    out += ["Test metrics at the best val epoch (top-3 category accuracy, A1-group top-3 attribute recall per type, "
            "A1-all-grouped, landmark NE: lower is better). Cells: mean ± sample std over seeds (n).", ""]
    table = summary_table(summary)
    out.append(_md_table(["model", *metrics], [[m, *[table.at[m, k] for k in metrics]] for m in models]))
    for baseline, frame in diffs.items():
        if frame.empty:
            continue
        out += ["", f"## Difference from `{baseline}` (paired by seed, 95% t-interval)", "",
                "Cells: mean difference (model - baseline) [95% interval] (n pairs); n = 1 gives no interval.", ""]
        rows = []
        for model in dict.fromkeys(frame["model"]):
            sub = frame[frame["model"] == model].set_index("metric")
            row = [model]
            for k in metrics:
                r = sub.loc[k]
                row.append(f"{_fmt(r['mean_diff'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}] (n={r['n']})")
            rows.append(row)
        out.append(_md_table(["model", *metrics], rows))
    return "\n".join(out) + "\n"


def write_report(results: list, out, baselines: Iterable[str] = DEFAULT_BASELINES,
                 metrics: Sequence[str] = STUDY_METRICS, extra: Optional[dict] = None) -> dict:
    """Write ``study.json`` and ``study.md`` under ``out``; returns the study.json content."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(results, metrics)
    present = set(r["model"] for r in results)
    diffs = {b: differences(results, b, metrics) for b in baselines if b in present}
    study = {**(extra or {}), "metrics": list(metrics), "runs": results,
             "summary": summary.to_dict(orient="records"),
             "differences": {b: f.to_dict(orient="records") for b, f in diffs.items()}}
    from vfu_nb.train import write_json

    write_json(out / "study.json", study)
    note = ""
    if extra and extra.get("config"):
        c = extra["config"]
        note = (f"Config: {c.get('epochs')} epochs, batch {c.get('batch_size')}, lr {c.get('lr')}, image "
                f"{c.get('image_size')}, width {c.get('width')}, max_items {c.get('max_items')}, data "
                f"`{c.get('data_root')}`.")
    (out / "study.md").write_text(to_markdown(summary, diffs, title="MTL vs CAT study", note=note))
    return jsonable(study)


# ----------------------------------------------------------------------------------------------------------
# Running


_IGNORED_CONFIG_KEYS = {"run_dir", "resume", "progress", "model", "seed", "num_workers", "device", "sync_every",
                        "threads"}


def run_study(models: Sequence[str], seeds: Sequence[int], base_config, out,
              baselines: Iterable[str] = DEFAULT_BASELINES, metrics: Sequence[str] = STUDY_METRICS) -> dict:
    """Train every (model, seed) not finished yet, then write the report. ``base_config``: TrainConfig/dict."""
    from vfu_nb.train import TrainConfig, train

    if isinstance(base_config, dict):
        base_config = TrainConfig.from_dict(base_config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    wanted = {k: v for k, v in jsonable(base_config.to_dict()).items() if k not in _IGNORED_CONFIG_KEYS}
    for seed in seeds:
        for model in models:
            run_dir = run_dir_for(out, model, seed)
            mfile = run_dir / "metrics.json"
            if mfile.exists():
                cfile = run_dir / "config.json"
                if cfile.exists():
                    have = {k: v for k, v in json.loads(cfile.read_text()).items() if k not in _IGNORED_CONFIG_KEYS}
                    changed = sorted(k for k in wanted if have.get(k) != wanted[k])
                    if changed:
                        warnings.warn(f"{run_dir} was finished with a different config ({changed}); kept as is. "
                                      f"Delete the folder to rerun it.")
                print(f"[study] {model} seed {seed}: finished, skipped", flush=True)
                metrics_json = json.loads(mfile.read_text())
            else:
                print(f"[study] {model} seed {seed}: training -> {run_dir}", flush=True)
                cfg = TrainConfig.from_dict({**base_config.to_dict(), "model": model, "seed": int(seed),
                                             "run_dir": str(run_dir), "resume": True})
                metrics_json = train(cfg)
            results.append(_record(metrics_json, run_dir))
    extra = {"models": list(models), "seeds": [int(s) for s in seeds],
             "config": jsonable(base_config.to_dict())}
    return write_report(results, out, baselines, metrics, extra)


def main(argv=None) -> dict:
    from vfu_nb.train import add_train_args, config_from_args

    parser = argparse.ArgumentParser(prog="python -m vfu_nb.study", description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["mtl", "mtl_no_landmarks", "cat"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default="runs/study")
    parser.add_argument("--baselines", nargs="+", default=list(DEFAULT_BASELINES))
    add_train_args(parser, skip=("model", "run_dir", "seed", "resume"))
    args = parser.parse_args(argv)
    ns = argparse.Namespace(**{k: v for k, v in vars(args).items()
                               if k not in ("models", "seeds", "out", "baselines")})
    config = config_from_args(ns)
    study = run_study(args.models, args.seeds, config, args.out, args.baselines)
    print((Path(args.out) / "study.md").read_text(), flush=True)
    return study


if __name__ == "__main__":
    main()
