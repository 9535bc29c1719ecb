"""The committed notebooks: hygiene (no outputs, a `parameters` cell of literals first, one shared setup), and
papermill run straight from the command line, from the repository root and from notebooks/."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vfu_nb import paths, pipeline

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
#: The series is what the pipeline runs (vfu_nb.pipeline.STEPS): a new notebook is its file and its step.
SERIES = sorted({notebook for notebook, _ in pipeline.STEPS.values()})


def cells(path, kind="code"):
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == kind]


def test_the_series_exists():
    assert [p.stem for p in NOTEBOOKS] == SERIES                 # every notebook has a step, every step a notebook
    assert SERIES[:5] == ["01_explore_data", "02_train", "03_compare_mtl_cat", "04_attention_maps",
                          "05_controls_and_seeds"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    for cell in cells(path):
        assert cell.get("outputs") == [], f"{path.name}: a code cell has outputs"
        assert cell.get("execution_count") is None, f"{path.name}: a code cell has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_holds_literals_only(path):
    code = cells(path)
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected one cell tagged 'parameters'"
    assert code[0] is tagged[0], f"{path.name}: the parameters cell must be the first code cell"
    for node in ast.parse("".join(tagged[0]["source"])).body:
        assert isinstance(node, ast.Assign), f"{path.name}: only assignments in the parameters cell"
        ast.literal_eval(node.value)           # literals only, so papermill can override every one


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_opens_with_the_thesis_section_it_reproduces(path):
    assert "thesis" in "".join(cells(path, "markdown")[0]["source"]).lower()
    assert json.loads(path.read_text())["cells"][0]["cell_type"] == "markdown"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_takes_the_runner_folders_relative_to_the_repository(path):
    params = pipeline.notebook_parameters(path.stem)
    assert {"out_dir", "figures_dir"} <= set(params), f"{path.name}: the pipeline passes out_dir and figures_dir"
    assert params["out_dir"].startswith("runs/smoke/") and params["figures_dir"] == "runs/smoke/figures"
    assert not any(isinstance(v, str) and v.startswith("..") for v in params.values()), "paths from the root"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_one_shared_setup_first_and_figures_through_it(path):
    setup = "".join(cells(path)[1]["source"])         # the first code cell after the parameters
    assert setup.startswith("from vfu_nb.notebook import setup\n"), f"{path.name}: setup before torch is imported"
    assert "nb = setup(out_dir" in setup
    source = "".join("".join(c["source"]) for c in cells(path))
    for copied in (".savefig(", "save_figure(", "%matplotlib", "GOMP_SPINCOUNT", ".write_text("):
        assert copied not in source, f"{path.name}: {copied} belongs to vfu_nb.notebook (nb.save, nb.write_metrics)"


def test_relative_paths_mean_the_repository_root_wherever_python_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert paths.repo_root() == REPO
    assert paths.resolve("data/synthetic") == REPO / "data" / "synthetic"
    assert paths.resolve(tmp_path / "x") == tmp_path / "x"
    # and back: paths inside the repository (or another base) shown relative to it, others as given
    assert paths.relative(REPO / "results" / "v2") == "results/v2"
    assert paths.relative(str(tmp_path / "x")) == str(tmp_path / "x") and paths.relative("data/x") == "data/x"
    assert paths.relative(tmp_path / "a" / "b", base=tmp_path) == "a/b"
    (tmp_path / "link").symlink_to(REPO / "docs", target_is_directory=True)
    assert paths.relative(tmp_path / "link") == str(tmp_path / "link")        # a link is a path of its own ...
    assert paths.relative(tmp_path / "link", follow_links=True) == "docs"     # ... unless followed
    assert paths.relative("link", follow_links=True) == "docs"                 # (relative: from the working dir)


def _papermill(args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "GOMP_SPINCOUNT": "1000"}
    return subprocess.run([sys.executable, "-m", "papermill", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("cwd", [".", "notebooks"])
def test_papermill_runs_a_notebook_from_the_root_and_from_notebooks(cwd, tmp_path):
    """The default data_root ("data/synthetic", the tree `make test` generates) is found from either folder."""
    folder = REPO / cwd
    notebook = Path(os.path.relpath(REPO / "notebooks" / "01_explore_data.ipynb", folder))
    proc = _papermill([str(notebook), str(tmp_path / "out.ipynb"), "-p", "out_dir", str(tmp_path / "01"),
                       "-p", "figures_dir", str(tmp_path / "figures"), "-p", "n_samples", "4"], folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = json.loads((REPO / "data" / "synthetic" / "synthetic.json").read_text())["n"]
    assert json.loads((tmp_path / "01" / "metrics.json").read_text())["images"] == expected
    assert (tmp_path / "figures" / "01_samples.png").exists()


def test_generated_prose_is_shown_as_markdown(monkeypatch):
    """nb.markdown: sentences as paragraphs, or as a list whose two-space-indented lines nest under the one before."""
    import IPython.display

    from vfu_nb.notebook import Notebook

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    Notebook.markdown(["`mtl` beats `cat`.", "No difference established."])
    Notebook.markdown(["**dial**", "  mtl − cat: +0.04", "next"], bullets=True)
    assert [type(s).__name__ for s in shown] == ["Markdown", "Markdown"]
    assert shown[0].data == "`mtl` beats `cat`.\n\nNo difference established."
    assert shown[1].data == "- **dial**\n    - mtl − cat: +0.04\n- next"


@pytest.mark.slow
def test_notebook_05_shows_its_generated_prose_as_markdown_not_as_printed_backticks(tmp_path, monkeypatch):
    """The sentences vfu_nb.study.report generates from the committed studies are display_data Markdown outputs
    (rendered: model names as code), and nothing the notebook prints carries a raw backtick."""
    import IPython.display

    from vfu_nb.notebook import Notebook
    from vfu_nb.study import report

    out = tmp_path / "05.ipynb"
    proc = _papermill(["notebooks/05_controls_and_seeds.ipynb", str(out), "-p", "out_dir", str(tmp_path / "05"),
                       "-p", "figures_dir", str(tmp_path / "figures")], REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = [o for c in json.loads(out.read_text())["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    markdown = ["".join(o["data"]["text/markdown"]) for o in outputs
                if o["output_type"] == "display_data" and "text/markdown" in o["data"]]
    printed = "".join("".join(o["text"]) for o in outputs if o["output_type"] == "stream")
    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj.data))
    study, study2 = (report.load_study(REPO / "results" / name) for name in ("plan.yaml", "v2/plan.yaml"))
    for prose in (report.reading(study), report.learning_curve_reading(study), report.dial_reading(study),
                  report.mechanism_reading(study2)):
        Notebook.markdown(prose)
    assert len(shown) == 4 and all("`mtl`" in text for text in shown[:1] + shown[3:])
    for text in shown:
        assert text in markdown, text[:200]
    assert report.contrast_table("primary", study2["fresh_seeds_family"]) in markdown     # the check without reuse
    assert "`" not in printed and "Showing the study of results/plan.yaml" in printed


@pytest.mark.slow                 # a second pytest process
@pytest.mark.parametrize("paths", [["notebooks"], []], ids=["notebooks only", "testpaths"])
def test_the_inner_loop_runs_no_notebook(paths):
    """``pytest -m "not slow"`` deselects every notebook cell, also when pytest is given notebooks/ alone."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "not slow", *paths],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 5), proc.stdout[-2000:] + proc.stderr[-2000:]    # 5: nothing left to run
    assert "deselected" in proc.stdout and not [line for line in proc.stdout.splitlines() if ".ipynb::" in line]
