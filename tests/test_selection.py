"""The trainer's model selection and early stopping (vfu_nb.training.loop.select_best) on scripted val sequences."""

import json
import math

import numpy as np
import pytest

from vfu_nb.training.loop import select_best

NAN = float("nan")


def start():
    """The trainer's state before the first epoch."""
    return {"epoch": None, "score": -math.inf, "val": None, "test": None, "bad_epochs": 0, "stopped": False}


def run(scores, patience, stop=True, min_epochs=0):
    """(best epoch, bad epochs, stopped) after each epoch; ends at the first stop unless ``stop`` is False."""
    best, trace = start(), []
    for epoch, score in enumerate(scores, start=1):
        best = select_best(best, epoch, score, patience, min_epochs)
        trace.append((best["epoch"], best["bad_epochs"], best["stopped"]))
        if stop and best["stopped"]:
            break
    return trace


def test_each_improvement_becomes_the_best_epoch():
    assert run([0.1, 0.2, 0.5, 0.9], None) == [(1, 0, False), (2, 0, False), (3, 0, False), (4, 0, False)]
    best = start()
    for epoch, score in enumerate([0.3, 0.8, 0.6], start=1):
        best = select_best(best, epoch, score, None)
    assert best["epoch"] == 2 and best["score"] == 0.8


def test_a_tie_keeps_the_earlier_epoch():
    assert run([0.4, 0.4, 0.4], None) == [(1, 0, False), (1, 1, False), (1, 2, False)]
    assert run([0.2, 0.5, 0.5, 0.5000001], None)[-1] == (4, 0, False)


def test_improvement_resets_the_patience_counter():
    # two bad epochs, an improvement, then two more bad epochs: only the second pair stops the run
    assert run([0.5, 0.4, 0.45, 0.6, 0.3, 0.2, 0.1], 3) == [
        (1, 0, False), (1, 1, False), (1, 2, False), (4, 0, False), (4, 1, False), (4, 2, False), (4, 3, True)]


@pytest.mark.parametrize("patience", [1, 2, 4])
def test_the_run_stops_exactly_after_patience_bad_epochs(patience):
    trace = run([0.9] + [0.1] * 10, patience)
    assert len(trace) == patience + 1
    assert [t[2] for t in trace] == [False] * patience + [True]
    assert trace[-1] == (1, patience, True)


def test_without_patience_the_run_never_stops():
    trace = run([0.9] + [0.1] * 20, None)
    assert len(trace) == 21 and not any(t[2] for t in trace) and trace[-1] == (1, 20, False)


def test_nan_is_a_bad_epoch_and_never_the_best():
    assert run([NAN, NAN], None) == [(None, 1, False), (None, 2, False)]
    assert run([0.3, NAN, 0.2, 0.4], 5) == [(1, 0, False), (1, 1, False), (1, 2, False), (4, 0, False)]
    assert run([NAN, 0.1], 1) == [(None, 1, True)]
    best = select_best(start(), 1, 0.25, None)
    assert select_best(best, 2, NAN, None)["score"] == 0.25


def test_a_new_state_with_the_other_fields_kept():
    before = {"epoch": 3, "score": 0.5, "val": {"category_top3": 0.5}, "test": {"category_top3": 0.4},
              "bad_epochs": 2, "stopped": False, "note": "kept"}
    snapshot = json.dumps(before, sort_keys=True)
    worse = select_best(before, 4, 0.1, 10)
    better = select_best(before, 4, np.float32(0.75), 10)
    assert json.dumps(before, sort_keys=True) == snapshot                 # the input is unchanged
    assert worse == {**before, "bad_epochs": 3}
    assert better == {**before, "epoch": 4, "score": 0.75, "bad_epochs": 0}
    assert type(better["score"]) is float                               # plain JSON, whatever the metric's type


def test_min_epochs_holds_off_early_stopping_until_that_epoch():
    lucky_first = [0.30, 0.26, 0.28, 0.29, 0.29, 0.31, 0.33]          # the 10 % split's seed-1 shape
    assert run(lucky_first, 4)[-1] == (1, 4, True) and len(run(lucky_first, 4)) == 5
    held = run(lucky_first, 4, min_epochs=6)
    assert len(held) == 7 and held[4] == (1, 4, False) and held[5] == (6, 0, False) and held[6] == (7, 0, False)
    # bad epochs already counted stop the run as soon as the minimum is reached
    assert run([0.5, 0.1, 0.1, 0.1], 2, min_epochs=4) == [(1, 0, False), (1, 1, False), (1, 2, False), (1, 3, True)]
    # a run that stops after the minimum stops exactly where it did without it
    assert run([0.2, 0.5, 0.4, 0.4, 0.4], 3, min_epochs=3) == run([0.2, 0.5, 0.4, 0.4, 0.4], 3)
