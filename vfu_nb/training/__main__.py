"""``python -m vfu_nb.training ...``: the training command line (:func:`vfu_nb.training.cli.main`)."""

from vfu_nb.training.cli import main

main()
