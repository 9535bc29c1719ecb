"""The study behind the README's results: equal tuning, seeds x models, learning curve, geometry dial.

    python -m vfu_nb.study run [PLAN] [--jobs 2] [--keep-going]   # train what is missing (resumable), export, report
    python -m vfu_nb.study run [PLAN] --executor slurm [--time 4:00:00 ...]   # the same through Slurm job arrays
    python -m vfu_nb.study status [PLAN]            # every run: pending, queued, running, done or failed
    python -m vfu_nb.study report [PLAN]            # results/study.json, figures/05_*.png, README block
    python -m vfu_nb.study readme [--check]         # rewrite (or check) the README block from study.json
    python -m vfu_nb.study export [PLAN] KEY        # export a finished run again from its run directory

``PLAN`` defaults to ``results/plan.yaml``. :func:`run` is the whole study (also for notebook 05): the data trees,
the runs through an executor (:mod:`vfu_nb.study.executors`), then the report (:mod:`vfu_nb.study.report`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

from vfu_nb.study import executors, report as reports
from vfu_nb.study.plan import DEFAULT_PLAN, Plan, choose_settings
from vfu_nb.study.runner import ensure_data, reexport


def run(plan, jobs: int = 1, log=print, executor: str = "local", slurm: Optional[dict] = None,
        wait: bool = True, keep_going: bool = False) -> Optional[dict]:
    """The whole study: data, tuning, choice, seeds/learning curve/dial, report. Resumable at any point.

    ``executor`` trains the runs (:mod:`vfu_nb.study.executors`): ``local`` (``jobs`` threads, the default) or
    ``slurm`` (job arrays; ``slurm`` overrides the plan's ``slurm:`` block). None when runs are still queued
    (``wait=False``): no report yet. ``keep_going``: a failed run does not stop the others (local executor).
    """
    plan = Plan.load(plan)
    t0 = time.time()
    if executor != "local":                 # jobs elsewhere must not make a tree at the same time: make them all here
        ensure_data(plan, plan.data_tags())
    if not executors.train(plan, executor, jobs=jobs, slurm=slurm, wait=wait, log=log, keep_going=keep_going):
        log("[study] runs are still queued or running: `python -m vfu_nb.study status` shows them; run the study "
            "again to submit what they unlock and to report")
        return None
    chosen, _ = choose_settings(plan)
    log(f"[study] chosen settings: {chosen}")
    log(f"[study] all runs exported ({(time.time() - t0) / 60:.1f} min this session)")
    return reports.report(plan)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m vfu_nb.study", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="train what is missing (resumable), export, report")
    p_run.add_argument("plan", nargs="?", default=str(DEFAULT_PLAN))
    p_run.add_argument("--jobs", type=int, default=1, help="runs trained at the same time (one thread each)")
    p_run.add_argument("--keep-going", action="store_true",
                       help="a failed run does not stop the others; the failures are listed at the end")
    executors.add_run_arguments(p_run)
    p_status = sub.add_parser("status", help="every run: pending, queued, running, done or failed (job id, log)")
    p_status.add_argument("plan", nargs="?", default=str(DEFAULT_PLAN))
    p_status.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p_rep = sub.add_parser("report", help="compute results/study.json from results/runs")
    p_rep.add_argument("plan", nargs="?", default=str(DEFAULT_PLAN))
    p_readme = sub.add_parser("readme", help="rewrite (or --check) the README block from results/study.json")
    p_readme.add_argument("--check", action="store_true", help="exit 1 when README and results/ disagree")
    p_exp = sub.add_parser("export", help="export a finished run again from its run directory (a damaged export)")
    p_exp.add_argument("plan", nargs="?", default=str(DEFAULT_PLAN))
    p_exp.add_argument("key", help="the run's key, e.g. default/mtl/vgg16_bn_lr0.001_f1/seed0")
    p_one = sub.add_parser("train-one", help=argparse.SUPPRESS)
    p_one.add_argument("request")
    args = parser.parse_args(argv)
    if args.command == "train-one":
        from vfu_nb.training.loop import train

        return train(json.loads(Path(args.request).read_text()))
    if args.command == "export":
        return reexport(Plan.load(args.plan), args.key)
    if args.command == "run":
        return run(args.plan, args.jobs, executor=args.executor, slurm=executors.slurm_overrides(args),
                   wait=not args.no_wait, keep_going=args.keep_going)
    if args.command == "status":
        sys.exit(executors.status_main(args.plan, args.json))
    if args.command == "readme":
        if args.check:
            ok = reports.readme_matches()
            print("README results block matches results/study.json" if ok else
                  "README results block differs from results/study.json: run python -m vfu_nb.study readme")
            sys.exit(0 if ok else 1)
        changed = reports.update_readme(reports.readme_block(reports.committed_study()))
        print("README block rewritten" if changed else "README block already up to date")
        return None
    return reports.report(args.plan)
