# `make test` and `make demo` both set up .venv on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Two pytest-xdist workers (the two cores of CI), handed a module at a time (its module
# fixtures are built once, its tests run in order), the modules with slow tests first
# (tests/conftest.py). A worker process that dies ends the run with its failure instead of
# being replaced (xdist's loadscope cannot hand a crashed worker's module on; it hung CI).
# TEST_PARALLEL= runs everything in one process.
TEST_PARALLEL ?= -n 2 --dist loadscope --no-loadscope-reorder --max-worker-restart=0

.PHONY: install test demo lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=20 $(TEST_PARALLEL)

demo: $(STAMP)
	$(BIN)/topiary demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy core models search workers service cli

clean:
	rm -rf $(VENV) .topiary
