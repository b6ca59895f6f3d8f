# Two commands do all the setup: `make run` (the main job) and `make test` (CI).
# Each creates the virtual environment when it is missing.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PLUGINS := $(sort $(dir $(wildcard plugins/*/pyproject.toml)))
STAMP   := $(VENV)/.installed

.PHONY: run test lint typecheck unit docs docs-outputs env study study-reuse clean

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
	$(BIN)/mypy tokenred experiments/demo_model $(foreach p,$(PLUGINS),$(filter-out %.egg-info,$(wildcard $(p)tokenred_*)))

unit: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint typecheck unit docs

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Rerun the commands whose outputs the docs show (getting-started.md, the plugin
# tutorial) and rewrite those blocks; `--check` instead fails on drift (timings
# aside). tests/test_docs_outputs.py runs the check under `pytest -m slow`.
docs-outputs: $(STAMP)
	$(BIN)/python docs/record_outputs.py

# The embedded study of the docs' results page (docs/study.md): the reducers under
# one set of controls, the positions ablation and the compute-matched cross-stage
# comparison; then their tables and figures in docs/study/ (positions/, flops/).
# Finished runs are reused. The run store is keyed by the demo model's weights
# file, so new weights never reuse old answers.
STUDY_WEIGHTS = $(shell $(PY) -c "import hashlib, pathlib; \
	p = pathlib.Path('tokenred/assets/tiny/model.safetensors'); \
	print(hashlib.sha256(p.read_bytes()).hexdigest()[:12] if p.is_file() else 'random')")
STUDY_ROOT = runs/study-$(STUDY_WEIGHTS)
STUDIES = demo_study demo_study_positions demo_study_flops

study: $(STAMP)
	$(foreach s,$(STUDIES),$(BIN)/tokenred run -c experiments/$(s).yaml output.root=$(STUDY_ROOT) &&) true
	$(BIN)/tokenred report $(STUDY_ROOT)/demo_study --out docs/study
	$(BIN)/tokenred report $(STUDY_ROOT)/demo_study_positions --out docs/study/positions
	$(BIN)/tokenred report $(STUDY_ROOT)/demo_study_flops --out docs/study/flops

# The KV-reuse comparison of docs/study.md ("Several questions per video"): five
# questions per video, every reducer with and without a shared video prefix.
study-reuse: $(STAMP)
	$(BIN)/tokenred run -c experiments/kv_reuse.yaml output.root=$(STUDY_ROOT)
	$(BIN)/tokenred run -c experiments/kv_reuse_fastv.yaml output.root=$(STUDY_ROOT)
	$(BIN)/tokenred report $(STUDY_ROOT)/kv_reuse $(STUDY_ROOT)/kv_reuse_fastv \
		--out docs/study/reuse

clean:
	rm -rf $(VENV) site
