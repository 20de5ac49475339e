# FleetLens developer commands. `make help` lists them.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

setup: ## Create .venv with the locked dependencies and install Debian packages (idempotent)
	@bash scripts/setup.sh

demo: setup ## Run broker, collector, archiver and a simulated fleet until Ctrl-C
	$(BIN)/fleetlens demo --servers 300

lab: setup ## JupyterLab on notebooks/, for the current profile's lake (simulated if it is empty)
	$(BIN)/fleetlens simulate lake --if-empty
	$(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

notebooks: setup ## Run every notebook headless on the profile's lake; HTML in build/notebooks
	$(BIN)/fleetlens simulate lake --if-empty
	$(BIN)/fleetlens notebooks run --out build/notebooks

test: setup ## Run the whole test suite (real broker, real lake)
	$(BIN)/pytest $(PYTEST_ARGS)

lint: setup ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup ## Format the code with ruff
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: setup ## mypy on the packages
	$(BIN)/mypy

bench: setup ## Run the benchmarks (figures go to docs/benchmarks.md by hand)
	$(BIN)/python -m bench

lock: ## Re-resolve requirements.lock from pyproject.toml
	$(BIN)/uv pip compile pyproject.toml --extra dev -p 3.11 -o requirements.lock

.PHONY: help setup demo lab notebooks test lint format typecheck bench lock
