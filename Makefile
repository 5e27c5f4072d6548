# Two commands do all the set-up: `make demo` and `make test`. Each creates .venv when missing;
# `make demo` installs only what the demo needs, `make test` the development tools too.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint layers typecheck unit bench clean docs

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The demo needs only the package itself: no test, lint or plot tools. A venv made for `make test`
# already has it.
DEMO_STAMP := $(VENV)/.demo-installed
$(DEMO_STAMP): pyproject.toml
	@if [ -f $(STAMP) ] && [ $(STAMP) -nt pyproject.toml ]; then touch $(DEMO_STAMP); else \
	  $(PYTHON) -m venv $(VENV) && $(BIN)/pip install --quiet -e . && touch $(DEMO_STAMP); fi

demo: $(DEMO_STAMP)
	$(BIN)/tensordock-autoscaler demo

lint: $(STAMP)
	$(BIN)/ruff check autoscaler policies tests bench

layers: $(STAMP)
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

test: lint layers typecheck unit

bench: $(STAMP)
	$(BIN)/python bench/client_overhead.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

docs: $(STAMP)
	$(BIN)/python -m autoscaler.commands.config_reference README.md
