# cocoseg developer entry points. Every target creates .venv on first use.
#   make demo   synthesise -> ingest -> train -> export -> register, all local (Ray, folder storage, MLflow on SQLite)
#   make test      the CI suite (CPU only; GPU-marked tests skip without a device): all but `extended`
#   make test-all  every test, `extended` ones too
#   make bench  the benchmarks under tests/benchmarks (print ratios against in-run baselines)
#   make lint   ruff + the import-layering contract
#   make gpu-wheels  the GPU check's extra needs as wheels in .whl/ (<= 30 MB; GPU_REF=1 adds ultralytics)
#   make gpu-check   on a CUDA machine: tests/benchmarks/gpu_check.py (docs/gpu-check.md)
#   make infra-render  re-render the Ray manifests in infra/k8s from infra/k8s-src (infra/README.md)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# The CPU build of torch lies on local disk; install it before the project so no resolver
# pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
# The installer is uv, in the project venv, pointed at the package sources pip is configured with
# (`pip config list`: find-links, index URLs, constraints), so it picks the wheels pip would (here:
# torch's CPU build on local disk), like pip across every index. pip took ~2 min of CI's 15 (the
# project and the IaC venvs side by side); uv 16 s for the project venv. No bytecode is compiled at
# install (that was ~55 s more: all of torch, Ray and MLflow): Python writes a module's bytecode
# the first time a process imports it, ~12 CPU-s once for a job's imports. A host that sets
# PYTHONDONTWRITEBYTECODE=1 would recompile in every process instead, so make clears it for
# everything it runs (docs/reliability.md, "Test time").
export PYTHONDONTWRITEBYTECODE :=
UV_VERSION ?= 0.13.9
UV := $(VENV)/bin/uv
UV_SOURCES = $(shell $(PYTHON) -m pip config list 2>/dev/null \
  | sed -nE "s/^[^.]*\.(find-links|extra-index-url|index-url|constraint)='(.*)'$$/\1 \2/p" \
  | while read -r key values; do for v in $$values; do echo "--$$key $$v"; done; done | sort -u)
UV_PIP = $(UV) pip install -q --index-strategy unsafe-best-match $(UV_SOURCES)
PYTEST_ARGS ?=
DEMO_ROOT ?= .cocoseg

.PHONY: setup deps test test-all demo lint bench clean infra-tools infra-render gpu-wheels gpu-check

setup: $(STAMP)

$(UV):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q "uv==$(UV_VERSION)"

$(STAMP): pyproject.toml | $(UV)
	$(UV_PIP) --python $(PY) "$(TORCH_SPEC)"
	$(UV_PIP) --python $(PY) -e ".[dev]"
	touch $(STAMP)

# Offline IaC validators live in their own venvs: checkov vendors a fork of python-hcl2 that
# overwrites the real one when both share an environment (see infra/README.md).
infra-tools: .venv-iac/.infra-tools

.venv-iac/.infra-tools: infra/requirements-iac.txt infra/requirements-hcl.txt | $(UV)
	test -x .venv-iac/bin/python || $(PYTHON) -m venv .venv-iac
	$(UV_PIP) --python .venv-iac/bin/python -r infra/requirements-iac.txt
	test -x .venv-hcl/bin/python || $(PYTHON) -m venv .venv-hcl
	$(UV_PIP) --python .venv-hcl/bin/python -r infra/requirements-hcl.txt
	touch $@

# The committed manifests are the renderer's output; tests/test_infra_k8s.py fails while stale.
infra-render: setup
	$(PY) infra/tools/render_k8s.py

# `extended` tests repeat behaviour that other tests cover (docs/reliability.md lists them);
# CI's 15-minute budget leaves them to `make test-all`.
# The suite runs on two xdist workers, each module whole on one of them (tests/conftest.py orders them,
# slowest first): a lone test leaves a core idle while it waits on a process start or a server, and two
# fill it (docs/reliability.md, "Test time": 1151 s against ~1375 s serially). PYTEST_WORKERS=0: serial.
PYTEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder)

test: deps
	$(VENV)/bin/pytest -m "not extended" $(XDIST) $(PYTEST_ARGS)

test-all: deps
	$(VENV)/bin/pytest $(XDIST) $(PYTEST_ARGS)

# The project venv and the IaC validator venvs install side by side (~25 s less on 2 cores).
deps:
	@$(MAKE) --no-print-directory -j2 setup infra-tools

demo: setup
	$(PY) -m pipelines.demo --root $(DEMO_ROOT)

lint: setup
	$(VENV)/bin/ruff check cocoseg pipelines tests
	$(VENV)/bin/lint-imports

bench: setup
	@set -e; for b in tests/benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b; done

clean:
	rm -rf $(VENV) .venv-iac .venv-hcl .cocoseg build *.egg-info

# The GPU check's wheels: what a bare Python 3.12 + torch/numpy/pyarrow/onnx/onnxruntime/
# safetensors/pytest machine lacks, for CPython 3.12 manylinux x86_64, plus the project itself.
GPU_PY      ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
GPU_WHEELS  ?= .whl
GPU_REF     ?= 0
GPU_DEPS    ?= pycocotools==2.0.11 pyyaml==6.0.4 pillow==13.0.0
GPU_PLATFORM := --only-binary=:all: --python-version 3.12 --implementation cp \
	--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64

gpu-wheels:
	rm -rf $(GPU_WHEELS) && mkdir -p $(GPU_WHEELS)
	$(GPU_PY) -m pip download -q --no-deps $(GPU_PLATFORM) -d $(GPU_WHEELS) $(GPU_DEPS)
	test "$(GPU_REF)" = 0 || $(GPU_PY) -m pip download -q --no-deps $(GPU_PLATFORM) -d $(GPU_WHEELS) ultralytics==8.4.190
	$(GPU_PY) -m pip wheel -q --no-deps --no-build-isolation -w $(GPU_WHEELS) .
	rm -rf build cocoseg.egg-info
	$(GPU_PY) tests/benchmarks/gpu_check.py --check-wheels --wheels $(GPU_WHEELS)

GPU_CHECK_ARGS ?=
gpu-check:
	$(PYTHON) tests/benchmarks/gpu_check.py --check-wheels --wheels $(GPU_WHEELS)
	$(PYTHON) tests/benchmarks/gpu_check.py --wheels $(GPU_WHEELS) $(GPU_CHECK_ARGS)
