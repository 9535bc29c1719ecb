# Two commands: `make run` (the main job) and `make test` (what CI runs). Both bootstrap .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   := data/synthetic
# Size of the synthetic benchmark that `make run` and the notebooks' defaults use.
SYNTHETIC_N ?= 4000

.PHONY: run test data install lab clean-runs

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.txt
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

data: $(DATA)/synthetic.json

$(DATA)/synthetic.json: | $(STAMP)
	$(BIN)/python -m vfu_nb.synthetic --out $(DATA) --n $(SYNTHETIC_N) --seed 0

run: $(STAMP) data
	$(BIN)/python -m vfu_nb.pipeline --profile default

test: $(STAMP) data
	$(BIN)/python -m pytest

lab: $(STAMP) data
	$(BIN)/jupyter lab notebooks/

clean-runs:
	rm -rf runs/
