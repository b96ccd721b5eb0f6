#!/usr/bin/env bash
# For a session that has the device tool's GPU machine (one H100/H200, Python 3.12 with CuPy,
# NCCL and torch preinstalled, no network). Here first: `make gpu-wheels` (fills .whl/ with what
# that image lacks: an MPI for mpi4py, pytest-mpi), then call the device tool's run with
#   carry: [".whl"]   command: bash benchmarks/gpu/device_run.sh
# It installs the wheels into a venv over the image's own packages (pip --target would drop
# MPICH's lib/ folder, and mpi4py then finds no libmpi: checked on the CPU machine), prints the
# versions the results must name, and runs the GPU tests with DDP_REQUIRE_GPU=1 (no GPU, or no
# NCCL, fails instead of skipping). Logs land in $OUT. Written without a GPU at hand (session 2):
# the wheel install was checked on the CPU machine; expect to adjust the rest on first use.
set -u -o pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m venv --system-site-packages /tmp/venv || exit 1
/tmp/venv/bin/python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PATH=/tmp/venv/bin:$PATH PYTHONPATH=$PWD PYTHONUNBUFFERED=1 DDP_REQUIRE_GPU=1 WANDB_MODE=disabled
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python - <<'PY'
import cupy, numpy, mpi4py
from cupy.cuda import nccl
from mpi4py import MPI
print("python", __import__("sys").version.split()[0], "numpy", numpy.__version__, "cupy", cupy.__version__,
      "cuda runtime", cupy.cuda.runtime.runtimeGetVersion(), "nccl", nccl.get_version(),
      "mpi4py", mpi4py.__version__, MPI.Get_library_version().splitlines()[0])
PY
} 2>&1 | tee "$OUT/versions.txt"
python -m pytest -q -p no:cacheprovider -rs tests/test_comm_nccl.py 2>&1 | tee "$OUT/gpu-tests.log"
# two ranks on the one GPU: NCCL must be refused by name (no hang); the unique-id hand-over runs
mpiexec -n 2 python -m pytest --with-mpi -q -p no:cacheprovider -rs tests/mpi/test_nccl.py 2>&1 | tee "$OUT/gpu-mpi-tests.log"
# the CuPy backend end to end, 1 rank then 2 ranks sharing the GPU (host-staged or CUDA-aware MPI)
python launch.py train experiments/mlp_digits.yaml --out /tmp/gpu1 --overwrite --set backend=cupy 2>&1 | tee "$OUT/gpu-train.log"
mpiexec -n 2 python launch.py train experiments/mlp_digits.yaml --out /tmp/gpu2 --overwrite --set backend=cupy 2>&1 | tee -a "$OUT/gpu-train.log"
cp /tmp/gpu1/summary.json "$OUT/summary-1rank.json" 2>/dev/null; cp /tmp/gpu2/summary.json "$OUT/summary-2ranks.json" 2>/dev/null
