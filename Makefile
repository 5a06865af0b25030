# cocoseg developer entry points. Every target creates .venv on first use.
#   make demo   synthesise -> ingest -> train -> export -> register, all local (Ray, folder storage, MLflow on SQLite)
#   make test      the CI suite (CPU only; GPU-marked tests skip without a device): all but `extended`
#   make test-all  every test, `extended` ones too
#   make bench  the benchmarks under tests/benchmarks (print ratios against in-run baselines)
#   make lint   ruff + the import-layering contract

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# The CPU build of torch lies on local disk; install it before the project so no resolver
# pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
DEMO_ROOT ?= .cocoseg

.PHONY: setup test test-all demo lint bench clean infra-tools

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]"
	touch $(STAMP)

# Offline IaC validators live in their own venvs: checkov vendors a fork of python-hcl2 that
# overwrites the real one when both share an environment (see infra/README.md).
infra-tools: $(VENV)/.infra-tools

$(VENV)/.infra-tools: $(STAMP) infra/requirements-iac.txt infra/requirements-hcl.txt
	test -x .venv-iac/bin/python || $(PYTHON) -m venv .venv-iac
	.venv-iac/bin/pip install -q -r infra/requirements-iac.txt
	test -x .venv-hcl/bin/python || $(PYTHON) -m venv .venv-hcl
	.venv-hcl/bin/pip install -q -r infra/requirements-hcl.txt
	touch $@

# `extended` tests repeat behaviour that other tests cover (docs/reliability.md lists them);
# CI's 15-minute budget leaves them to `make test-all`.
test: setup infra-tools
	$(VENV)/bin/pytest -m "not extended" $(PYTEST_ARGS)

test-all: setup infra-tools
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: setup
	$(PY) -m pipelines.demo --root $(DEMO_ROOT)

lint: setup
	$(VENV)/bin/ruff check cocoseg pipelines tests
	$(VENV)/bin/lint-imports

bench: setup
	@set -e; for b in tests/benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b; done

clean:
	rm -rf $(VENV) .venv-iac .venv-hcl .cocoseg build *.egg-info
