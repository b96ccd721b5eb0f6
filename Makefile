# The two commands:  make run  (train the MLP on the embedded digits with 2 MPI ranks)
#                    make test (every test)
# Both create .venv and install everything on a fresh Debian machine with Python 3.11.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
RANKS   ?= 2
# CI (CI=true) or TORCH=1 installs the pinned CPU torch, the external oracle of the gradient tests;
# without it those tests check against committed torch fixtures and skip the live comparison.
TORCH   ?= $(if $(filter true,$(CI)),1,0)
STRICT  := $(if $(filter true,$(CI)),1,0)

.PHONY: setup run test test-fast bench bench-quick gpu-wheels clean cluster-start cluster-stop

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

setup: $(BIN)/.installed

run: setup
	$(BIN)/python launch.py local -n $(RANKS) experiments/mlp_digits.yaml --out runs/mlp_digits --overwrite

# System data and SLURM for the tests need root (apt); elsewhere those tests skip with a reason,
# and in CI (DDP_REQUIRE_*=1) a skip of them is a failure.
# The tests start hundreds of Python processes (launch.py runs, MPI ranks, pytest under mpiexec): with
# PYTHONDONTWRITEBYTECODE set in the environment each would compile the package's and the tests'
# sources again (~0.13 s of CPU each), so the tests write bytecode (__pycache__ is git-ignored).
test: export PYTHONDONTWRITEBYTECODE :=
test-fast: export PYTHONDONTWRITEBYTECODE :=
test: setup
	@if [ "$(TORCH)" = 1 ]; then $(BIN)/python -m pip install -q torch==2.13.0; fi
	@if [ "$$(id -u)" = 0 ] && [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  (apt-get update -qq && apt-get install -y -qq --no-install-recommends dataset-fashion-mnist) >/dev/null 2>&1 \
	  || echo "note: could not install dataset-fashion-mnist"; fi
	DDP_REQUIRE_TORCH=$(TORCH) DDP_REQUIRE_FASHION=$(STRICT) DDP_REQUIRE_SLURM=$(STRICT) \
	  $(BIN)/python -m pytest tests -q -rs

test-fast: setup
	$(BIN)/python -m pytest tests -q -x --ignore=tests/slurm

# Benchmarks against the peers (PyTorch eager, DDP/gloo, raw mpi4py): see benchmarks/README.md.
bench: setup
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python benchmarks/run_all.py

bench-quick: setup
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python benchmarks/run_all.py --quick

# Wheels for the device tool's GPU machine (Python 3.12, no network): see benchmarks/gpu/device_run.sh.
gpu-wheels:
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
	  -d .whl mpich mpi4py pytest-mpi pytest-timeout hypothesis sortedcontainers attrs pyyaml nvidia-ml-py

cluster-start:
	bash slurm/dev-cluster.sh start
cluster-stop:
	bash slurm/dev-cluster.sh stop

clean:
	rm -rf $(VENV) runs .pytest_cache
