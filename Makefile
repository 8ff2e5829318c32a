# motion_relevance — common tasks. Every target that runs code installs first (quick when nothing changed).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help install demo test test-full lint format bench clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first (a CPU build from local disk here), then the project with its dev and transformers extras beside it.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install -q -e ".[dev,transformers]"
	@$(BIN)/python -c "import torch, sys; v = torch.__version__.split('+')[0]; \
	  sys.exit(0 if v == '$(TORCH_VERSION)' else 'torch was replaced: ' + torch.__version__)"
	@! $(BIN)/python -c "import torchvision" 2>/dev/null || (echo "torchvision got installed; remove it" && false)
	touch $(STAMP)

install: $(STAMP)  ## create .venv with torch==$(TORCH_VERSION) and the project (idempotent)

demo: install  ## generate motion_shapes, train the small C3D on CPU, test it, print the run folder
	$(BIN)/python -m motion_relevance.train

test: install  ## fast test suite (< 10 min on 2 CPU cores)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-full: install  ## every test, including the slow ones
	$(BIN)/python -m pytest -q -m "" $(PYTEST_ARGS)

lint: install  ## ruff, then the import contracts of pyproject.toml (docs/architecture.md)
	$(BIN)/ruff check src tests benchmarks experiments
	$(BIN)/lint-imports

format: install  ## ruff format + autofix
	$(BIN)/ruff check --fix src tests benchmarks experiments
	$(BIN)/ruff format src tests benchmarks experiments

bench: install  ## every benchmark under benchmarks/ (writes benchmarks/results/)
	$(BIN)/python benchmarks/run_all.py

clean:  ## remove caches and run outputs (keeps .venv and data)
	rm -rf logs multirun outputs .pytest_cache .ruff_cache wandb
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
