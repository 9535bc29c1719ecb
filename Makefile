# `make run` (the main job), `make test` (what CI runs), `make lab` (JupyterLab on the repository).
# Every target bootstraps .venv first, from the exact versions in requirements.lock.
PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DATA    := data/synthetic
# Size of the synthetic benchmark that `make run` and the notebooks' defaults use.
SYNTHETIC_N ?= 4000
# `make run PROFILE=smoke ARGS="-p epochs 3"`: any profile of profiles/ and any pipeline options.
PROFILE ?= default
ARGS    ?=

.PHONY: run test data install lab lock clean-runs

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.lock pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.lock
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Always asks the generator: it returns at once when the tree is current (same size, seed and version).
data: $(STAMP)
	$(BIN)/python -m vfu_nb.data.synthetic --out $(DATA) --n $(SYNTHETIC_N) --seed 0

run: $(STAMP) data
	$(BIN)/python -m vfu_nb.pipeline --profile $(PROFILE) $(ARGS)

# TEST_WORKERS: pytest-xdist workers (each test file runs on one worker; conftest.py keeps the files that share
# state together). The 15 slowest tests are listed at the end, to see where the time goes.
TEST_WORKERS ?= 2
test: $(STAMP) data
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --durations=15

# Rooted at the repository: notebooks/, the executed copies in runs/ and figures/ all open from the file browser.
# As root (containers) it adds --allow-root, which Jupyter otherwise demands, and says so.
# LAB_ARGS: more JupyterLab options, e.g. LAB_ARGS="--no-browser --ServerApp.port=8890".
LAB_ARGS ?=
lab: $(STAMP) data
	@if [ "$$(id -u)" = 0 ]; then \
	    echo "make lab: running as root, so JupyterLab gets --allow-root (Jupyter refuses root without it)"; \
	    root=--allow-root; \
	fi; \
	exec $(BIN)/jupyter lab --config=jupyter_server_config.py --ServerApp.root_dir=$(CURDIR) $$root $(LAB_ARGS)

# Rewrite requirements.lock from the venv (after changing requirements.txt or pyproject.toml and installing).
# CUDA wheels, which torch pulls in on Linux only, keep torch's own platform marker.
lock: | $(BIN)/python
	{ echo "# Exact versions of every package in .venv (make lock); make install uses this file."; \
	  $(BIN)/python -m pip freeze --all --exclude-editable --disable-pip-version-check | grep -v '^pip==' \
	  | sed -E 's/^((nvidia-|cuda-|triton=)[^ ]*)$$/\1 ; platform_system == "Linux"/'; } > requirements.lock

clean-runs:
	rm -rf runs/

# Mutation testing of the core modules (mutmut; not part of `make test`): each module in its own copy under
# build/mutation/ with only its own tests; prints the score per module. Scores and how to read them: docs/testing.md.
# `make mutation MODULES="losses training.loop" JOBS=1` for some modules or fewer workers.
MODULES ?=
JOBS    ?= 2
.PHONY: mutation
mutation: $(STAMP)
	$(BIN)/python tools/mutation.py --max-children $(JOBS) $(MODULES)
