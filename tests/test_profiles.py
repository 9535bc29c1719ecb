"""The profiles' recipes as the docs restate them: every number docs/workflow.md gives for a profile is the one
in profiles/<name>.yaml (the training settings all of its training steps get)."""

import re
from pathlib import Path

import pytest

from vfu_nb import pipeline

REPO = Path(__file__).resolve().parents[1]

#: The phrases in which the docs restate a training setting: setting -> (pattern, type of its value).
PHRASES = {
    "image_size": (r"(\d+) px", int),
    "width": (r"\bwidth ([\d.]+)", float),
    "backbone": (r"\b(vgg16(?:_bn)?)\b", str),
    "batch_size": (r"\bbatch (\d+)", int),
    "lr": (r"\blr ([\d.]+(?:e-?\d+)?)", float),
    "lr_gamma": (r"decaying ×([\d.]+) per epoch", float),
    "patience": (r"\bpatience (\d+)", int),
    "min_epochs": (r"\bat least (\d+)", int),
    "epochs": (r"(\d+) epochs", int),
    "threads": (r"(\d+) threads? per run", int),
}


def profile_rows() -> dict:
    """``{profile: its row of the profile table in docs/workflow.md}``."""
    doc = (REPO / "docs" / "workflow.md").read_text()
    table = doc.split("| profile | steps | settings |", 1)[1].split("\n\n", 1)[0]
    return dict(re.findall(r"^\| `(\w+)` \|(.*)$", table, flags=re.M))


def training_settings(name: str) -> dict:
    """What every training step of the profile gets (its values for all notebooks and for ``02_train``)."""
    profile = pipeline.load_profile(name)
    return {key: value for target, key, value, _ in profile["overrides"] if target in (None, "02_train")}


def test_the_docs_have_a_row_for_every_profile():
    assert sorted(profile_rows()) == sorted(p.stem for p in (REPO / "profiles").glob("*.yaml"))


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "profiles").glob("*.yaml")))
def test_every_number_the_docs_give_is_the_profiles(name):
    row, settings = profile_rows()[name], training_settings(name)
    for key, (pattern, kind) in PHRASES.items():
        said = [kind(value) for value in re.findall(pattern, row)]
        if key in settings:
            assert said in ([], [kind(settings[key])]), (name, key, said, settings[key])
        else:
            assert said == [], f"docs/workflow.md gives {name} a {key} ({said}) that profiles/{name}.yaml does not set"
    if re.search(PHRASES["lr_gamma"][0], row):
        assert settings.get("lr_schedule") == "exp", name


def test_the_default_row_restates_the_whole_recipe():
    """The row of `make run`'s profile names every training setting of it that the phrases know."""
    settings = training_settings("default")
    said = {key for key, (pattern, _) in PHRASES.items() if re.search(pattern, profile_rows()["default"])}
    assert said == set(PHRASES) & set(settings)
