"""Hygiene of the committed notebooks: no outputs, a papermill `parameters` cell of literals first."""

import ast
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


SERIES = ["01_explore_data", "02_train_mtl", "03_train_cat", "04_compare_mtl_cat", "05_attention_maps",
          "06_controls_and_seeds"]


def test_the_series_exists():
    assert [p.stem for p in NOTEBOOKS][:len(SERIES)] == SERIES


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name}: a code cell has outputs"
            assert cell.get("execution_count") is None, f"{path.name}: a code cell has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_holds_literals_only(path):
    nb = json.loads(path.read_text())
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected one cell tagged 'parameters'"
    first_code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    assert first_code is tagged[0], f"{path.name}: the parameters cell must be the first code cell"
    tree = ast.parse("".join(tagged[0]["source"]))
    for node in tree.body:
        assert isinstance(node, ast.Assign), f"{path.name}: only assignments in the parameters cell"
        ast.literal_eval(node.value)           # literals only, so papermill can override every one


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_opens_with_the_thesis_section_it_reproduces(path):
    nb = json.loads(path.read_text())
    assert nb["cells"][0]["cell_type"] == "markdown"
    assert "thesis" in "".join(nb["cells"][0]["source"]).lower()


def _parameters(path) -> dict:
    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    return {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse("".join(cell["source"])).body}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_takes_the_runner_directories(path):
    params = _parameters(path)
    assert {"out_dir", "figures_dir"} <= set(params), f"{path.name}: the pipeline passes out_dir and figures_dir"
    assert params["out_dir"].startswith("../runs/smoke/"), "smoke defaults write under runs/smoke"


def test_every_profile_passes_only_parameters_the_notebooks_declare():
    from vfu_nb import pipeline

    declared = {p.stem: set(_parameters(p)) for p in NOTEBOOKS}
    for name, profile in pipeline.PROFILES.items():
        for step in [s for s in pipeline.STEPS if s in profile["steps"] or s in profile]:
            given = set(profile["common"]) | set(profile.get(step, {}))
            assert given <= declared[step], f"profile {name}, {step}: {sorted(given - declared[step])} undeclared"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_figures_are_saved_through_the_helper(path):
    source = "".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
    assert ".savefig(" not in source, f"{path.name}: save figures with vfu_nb.figures.save_figure"
