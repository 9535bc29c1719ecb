"""Training: settings, the loop, and the run directory it writes (reference: docs/training.md).

* :mod:`~vfu_nb.training.config`: :class:`TrainConfig`, every setting of a run, and its command line (jsonargparse);
* :mod:`~vfu_nb.training.runtime`: seeds, device, DDP processes, precision and threads;
* :mod:`~vfu_nb.training.builders`: data sets, batches, network, loss and schedule from a config;
* :mod:`~vfu_nb.training.loop`: ``train(config)``, the training step and the evaluation loop;
* :mod:`~vfu_nb.training.rundir`: :class:`RunDir`, every file inside a run directory, and its lock;
* :mod:`~vfu_nb.training.runs`: using runs: train-or-resume, find, load, predict;
* :mod:`~vfu_nb.training.cli`: ``python -m vfu_nb.training ...``.
"""
