# Two commands do all the setup: `make run` (the main job) and `make test` (CI).
# Each creates the virtual environment when it is missing.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PLUGINS := $(sort $(dir $(wildcard plugins/*/pyproject.toml)))
STAMP   := $(VENV)/.installed

.PHONY: run test lint typecheck unit docs env clean

$(STAMP): pyproject.toml constraints/cpu.txt $(wildcard plugins/*/pyproject.toml)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints/cpu.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints/cpu.txt -e ".[dev,docs]" $(foreach p,$(PLUGINS),-e $(p))
	touch $(STAMP)

env: $(STAMP)

run: $(STAMP)
	$(BIN)/tokenred run --reducer sttm

lint: $(STAMP)
	$(BIN)/ruff check tokenred plugins tests benchmarks experiments
	$(BIN)/ruff format --check tokenred plugins

typecheck: $(STAMP)
	$(BIN)/mypy tokenred $(foreach p,$(PLUGINS),$(filter-out %.egg-info,$(wildcard $(p)tokenred_*)))

unit: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint typecheck unit docs

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) site
