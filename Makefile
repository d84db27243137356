# The two commands of the README:
#   make run    the main job: local Kafka, a worker, simulated customers, live results
#   make test   lint, type-check and the whole test suite on a real local broker
# Both set everything up on a fresh machine (virtualenv, Python packages, Kafka jars).
#   make compile  the compiled model (mypyc) in build/compiled/, as `make test` builds it

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# The compiled model: built into build/compiled/, never into the source tree
# (README, "Compiled model").
COMPILED := $(BIN)/python deploy/ci/compiled_model.py

.PHONY: run test lint setup compile clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)
	$(BIN)/vitals kafka fetch

run: setup
	$(BIN)/vitals demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	$(BIN)/lint-imports

compile: $(STAMP)
	$(COMPILED) build

# The unit tests on the interpreted model (the reference), then the whole suite
# on the compiled one (--import-mode=append: pytest would otherwise put the
# source tree ahead of build/compiled/). Without a C compiler the second run is
# interpreted too, and says so. pytest exits 5 when it collects nothing: that
# alone is not a failure here.
test: setup lint
	bash deploy/ci/install-test-tools.sh
	$(BIN)/python -m pytest -ra tests/unit $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(COMPILED) build
	$(COMPILED) run -- $(BIN)/python -m pytest -ra --durations=15 --import-mode=append \
	  $(PYTEST_ARGS) || [ $$? -eq 5 ]

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
