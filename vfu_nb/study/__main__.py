"""``python -m vfu_nb.study ...``: the study's command line (:func:`vfu_nb.study.cli.main`)."""

from vfu_nb.study.cli import main
from vfu_nb.study.store import one_line_errors

with one_line_errors():     # expected failures (disk full, damaged results, ...) in one line
    main()
