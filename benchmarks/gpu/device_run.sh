#!/usr/bin/env bash
# For a session that has the device tool's GPU machine (one H100/H200, Python 3.12 with CuPy,
# NCCL and torch preinstalled, no network). Here first: `make gpu-wheels` (fills .whl/ with what
# that image lacks: an MPI for mpi4py, pytest-mpi), then call the device tool's run with
#   carry: [".whl"]   command: bash benchmarks/gpu/device_run.sh
# It installs the wheels into /tmp/site, prints the versions the results must name, and runs
# the GPU tests with DDP_REQUIRE_GPU=1 (a missing GPU or NCCL fails instead of skipping).
# Logs land in $OUT. Written without a GPU at hand (session 2): expect to adjust it on first use.
set -u -o pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1 DDP_REQUIRE_GPU=1 WANDB_MODE=disabled
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 - <<'PY'
import cupy, numpy, mpi4py
from cupy.cuda import nccl
from mpi4py import MPI
print("python", __import__("sys").version.split()[0], "numpy", numpy.__version__, "cupy", cupy.__version__,
      "cuda runtime", cupy.cuda.runtime.runtimeGetVersion(), "nccl", nccl.get_version(),
      "mpi4py", mpi4py.__version__, MPI.Get_library_version().splitlines()[0])
PY
} 2>&1 | tee "$OUT/versions.txt"
python3 -m pytest -q -p no:cacheprovider -rs tests/test_comm_nccl.py 2>&1 | tee "$OUT/gpu-tests.log"
