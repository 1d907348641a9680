# Two commands on a fresh machine with python3 and pip:
#   make demo   venv, build, run the main job on the embedded default data
#   make test   venv, build, run the test suite (.ci/run calls it, then `make lint`)
#
# TORCH_SPEC pins the CPU wheel these machines carry on local disk; on a GPU
# machine with torch already installed use `make test VENV_FLAGS=--system-site-packages`
# or install with pip directly (docs/building.md).
PYTHON      ?= python3
VENV        ?= .venv
VENV_FLAGS  ?=
TORCH_SPEC  ?= torch==2.13.0
TRITON_SPEC ?= triton==3.6.0
PY          := $(VENV)/bin/python
DEPS_STAMP  := $(VENV)/.deps-installed
PYTEST_ARGS ?=

.PHONY: all build test lint demo bench clean

all: test

$(PY):
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)

# What the build compiles against, installed once per venv (and again when this file changes).
$(DEPS_STAMP): Makefile | $(PY)
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install "$(TORCH_SPEC)" "$(TRITON_SPEC)" numpy pybind11 ninja
	touch $(DEPS_STAMP)

# --no-build-isolation: compile against the torch installed above (docs/building.md).
# The extras come from pyproject.toml: train (matplotlib, scikit-learn, tqdm: the training
# layer, so `make demo` needs it) and test (pytest, hypothesis, arviz, ruff, ...).
# The install is editable, so only the C++/CUDA sources and the build files call for a new one:
# without the stamp every `make demo` / `make test` would recompile the extension (80 s on 2 cores).
BUILD_STAMP := $(VENV)/.build-stamp
BUILD_INPUTS := $(shell find csrc -type f) setup.py pyproject.toml

$(BUILD_STAMP): $(DEPS_STAMP) $(BUILD_INPUTS)
	$(PY) -m pip install --no-build-isolation -e ".[train,test]"
	touch $(BUILD_STAMP)

build: $(BUILD_STAMP)
	@ls langevin_kernels/_C*.so > /dev/null 2>&1 || { rm -f $(BUILD_STAMP); $(MAKE) --no-print-directory $(BUILD_STAMP); }

test: build
	$(PY) -m pytest $(PYTEST_ARGS)

# ruff with the rule set of pyproject.toml ([tool.ruff]); ruff comes with the test extra.
lint: build
	$(PY) -m ruff check .

demo: build
	$(PY) -m langevin_kernels.train.demo --out runs/demo

# The peers are optional (torchebm: pip extra "bench"; jax, blackjax, ebmkit: pip extra "peers",
# the samplers suite's); none changes torch.
# Results go to runs/bench/; add BENCH_ARGS=--update-results to refresh benchmarks/results/.
BENCH_ARGS ?=
bench: build
	$(PY) -m pip install "torchebm>=0.8,<0.9" jax blackjax ebmkit
	$(PY) -m benchmarks.run --suite all --quick --device cpu $(BENCH_ARGS)

clean:
	rm -rf build *.egg-info langevin_kernels/_C*.so $(BUILD_STAMP)
