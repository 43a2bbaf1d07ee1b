# Set-up and entry points. `make demo` and `make test` each install what they need.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0        # the CPU wheel first: never a multi-GB CUDA build
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)      ## the main job, end to end, on the embedded default
	$(BIN)/hf-paramgen demo --output_dir outputs/demo

lint: $(STAMP)      ## ruff (configured in pyproject.toml)
	$(BIN)/ruff check .

test: lint          ## ruff, then the default (fast) test suite
	$(BIN)/python -m pytest

test-slow: $(STAMP) ## slow tests only
	$(BIN)/python -m pytest -m slow

.PHONY: install demo lint test test-slow
