# Two commands on a fresh machine with python3 and pip:
#   make demo   venv, build, run the main job on the embedded default data
#   make test   venv, build, run the test suite (what .ci/run calls)
#
# TORCH_SPEC pins the CPU wheel these machines carry on local disk; on a GPU
# machine with torch already installed use `make test VENV_FLAGS=--system-site-packages`
# or install with pip directly (README, "Building").
PYTHON      ?= python3
VENV        ?= .venv
VENV_FLAGS  ?=
TORCH_SPEC  ?= torch==2.13.0
TRITON_SPEC ?= triton==3.6.0
PY          := $(VENV)/bin/python
DEPS_STAMP  := $(VENV)/.deps-installed
PYTEST_ARGS ?=

.PHONY: all build test demo bench clean

all: test

$(PY):
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)

# Dependencies are installed once per venv (re-run after editing this list: rm the stamp).
$(DEPS_STAMP): | $(PY)
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install "$(TORCH_SPEC)" "$(TRITON_SPEC)" numpy pybind11 ninja \
	    pytest pytest-benchmark pytest-timeout hypothesis tqdm matplotlib scikit-learn arviz
	touch $(DEPS_STAMP)

# --no-build-isolation: compile against the torch installed above (docs/building.md).
build: $(DEPS_STAMP)
	$(PY) -m pip install --no-build-isolation --no-deps -e .

test: build
	$(PY) -m pytest $(PYTEST_ARGS)

demo: build
	$(PY) -m langevin_kernels.train.demo --out runs/demo

# The peers are optional (torchebm: pip extra "bench"; jax: its CPU wheels); neither changes torch.
# Results go to runs/bench/; add BENCH_ARGS=--update-results to refresh benchmarks/results/.
BENCH_ARGS ?=
bench: build
	$(PY) -m pip install "torchebm>=0.8,<0.9" jax
	$(PY) -m benchmarks.run --suite all --quick --device cpu $(BENCH_ARGS)

clean:
	rm -rf build *.egg-info langevin_kernels/_C*.so
