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


# ----------------------------------------------------------------------------------------------------------
# One recipe file for make run's profile and the studies


def test_make_run_and_both_studies_read_one_recipe_file():
    import yaml

    from vfu_nb.study.plan import Plan

    recipe = yaml.safe_load((REPO / "profiles" / "recipes" / "cpu.yaml").read_text())
    for plan in ("results/plan.yaml", "results/v2/plan.yaml"):
        assert "recipe: profiles/recipes/cpu.yaml" in (REPO / plan).read_text()
        assert list(Plan.load(REPO / plan).base.items()) == list(recipe.items()), plan   # same values, same order
    settings = training_settings("default")
    assert {k: settings[k] for k in recipe if k != "epochs"} == {k: v for k, v in recipe.items() if k != "epochs"}
    assert settings["epochs"] == 20 < recipe["epochs"]                 # make run's cap replaces the recipe's


def test_a_recipe_is_expanded_in_place_and_checked(tmp_path):
    from vfu_nb.training.config import ConfigError, with_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("image_size: 64\nlr: 0.001\npatience: 4\n")
    assert list(with_recipe({"recipe": str(recipe), "lr": 0.01, "seed": 3}).items()) == [
        ("image_size", 64), ("lr", 0.01), ("patience", 4), ("seed", 3)]
    assert with_recipe({"lr": 0.01}) == {"lr": 0.01}
    with pytest.raises(ConfigError, match=r"plan\.yaml: base: recipe .*missing\.yaml does not exist"):
        with_recipe({"recipe": str(tmp_path / "missing.yaml")}, "plan.yaml: base")
    recipe.write_text("image_size: 64\nimgae_size: 32\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: \['imgae_size'\] are not TrainConfig fields"):
        with_recipe({"recipe": str(recipe)})
    profile = tmp_path / "p.yaml"
    profile.write_text(f"02_train:\n  recipe: {recipe}\n")
    with pytest.raises(pipeline.PipelineError, match=r"\['imgae_size'\] are not TrainConfig fields"):
        pipeline.load_profile(str(profile))
