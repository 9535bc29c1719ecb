"""The study behind the README's results, one module per concern (``python -m vfu_nb.study``: :mod:`.cli`).

* :mod:`.plan` -- what to train: the plan file (:class:`~.plan.Plan`), its runs (:class:`~.plan.RunSpec`) and
  their keys and seeds, the tuning that chooses each model's setting (:func:`~.plan.choose_settings`,
  :func:`~.plan.tuning_lrs`), the pending runs and the drift of exported runs from the plan.
* :mod:`.runner` -- how one run is trained, exported and reused, and the local executor's thread pool
  (:func:`~.runner.train_pending`); :mod:`.executors` chooses the executor (local or Slurm) and reports where each
  run stands (``study status``); :mod:`.slurm` holds the Slurm settings, the queue and the job that trains one run.
* :mod:`.store` -- the result files under ``results/``: read and checked, baselines committed with them, atomic
  writes, one-line errors.
* :mod:`.analysis` -- statistics over the exported runs: summaries and paired comparisons (first study), contrasts
  and their outcomes (:mod:`.contrasts`, study 2), where attention falls, what the outcomes establish together.
* :mod:`.report` -- ``study.json``, the figures, and the README blocks (templates ``readme_study1.md.j2``,
  ``readme_study2.md.j2``) and sentences rendered from it.
* :mod:`.cli` -- :func:`~.cli.run` (the whole study: runs, then report) and the command line.

Imports go one way: store <- plan <- runner <- slurm <- executors <- cli, and plan <- analysis <- report <- cli.
"""
