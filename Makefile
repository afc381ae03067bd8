# Everything runs inside .venv, created here on first use from a bare Python 3.11 + pip + gcc.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
# Real datasets: CI and developers keep them in ../shared/data; override with M2GRL_DATA_DIR.
M2GRL_DATA_DIR ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),)
export M2GRL_DATA_DIR
RUNS ?= runs

.PHONY: venv demo test lint format eval bench deploy-check images clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch is pinned to the CPU build that the machines carry; see README.
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m trainer.demo --runs $(RUNS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/python -m pytest -q -ra

eval: $(STAMP)
	$(BIN)/python -m trainer.eval.reproduce --runs $(RUNS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_train.py --out $(RUNS)/bench_train.json

deploy-check: $(STAMP)
	$(BIN)/hadolint Dockerfile
	$(BIN)/python -m pytest -q tests/test_deploy.py

# Needs a Docker engine (none runs on the development machines).
images:
	docker build --target serve -t m2grl-serve:0.1.0 .
	docker build --target train -t m2grl-train:0.1.0 .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
