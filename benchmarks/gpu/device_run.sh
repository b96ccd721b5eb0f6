#!/usr/bin/env bash
# One call on the device tool's GPU machine (one H100/H200, Python 3.12 with CuPy, NCCL and torch
# preinstalled, no network) that proves what the CPU machines cannot. Here first: `make gpu-wheels`
# (fills .whl/ with what that image lacks: an MPI for mpi4py, pytest-mpi, hypothesis), then call
# the device tool's run with
#   carry: [".whl"]   command: bash benchmarks/gpu/device_run.sh   (timeout_s 600 at most per call:
#   STAGES="suite" and STAGES="device train bench" split it over two calls if one is too long)
# Stages (all by default): suite  - the whole suite with the real CuPy present (DDP_REQUIRE_GPU=1:
#                                   no GPU or no NCCL fails instead of skipping);
#                          device - training, 2-rank equivalence, resume and reliability tests
#                                   with backend cupy on the GPU (DDP_TEST_DEVICE=cupy);
#                          train  - launch.py train, 1 rank and 2 ranks sharing the GPU;
#                          bench  - benchmarks/gpu/bench_gpu.py (MLP and GPT against torch CUDA).
# Every log and result lands in $OUT; gpu_steps.json names device, driver, CUDA, CuPy, NCCL, MPI
# and torch; copy it to benchmarks/results/gpu/ and commit. Written without a GPU at hand: its
# CPU-checkable parts run in tests/test_benchmarks.py (this script's syntax and paths, the
# benchmark's --check on the strict stand-in); expect to adjust the rest on first use.
# VENV and WHEELS move the venv and the wheel folder; STAGES=install only makes the venv (the
# CPU test of this script uses both).
set -u -o pipefail
OUT=${OUT:-/tmp/out}
STAGES=${STAGES:-"suite device train bench"}
VENV=${VENV:-/tmp/venv}
WHEELS=${WHEELS:-.whl}
for stage in $STAGES; do
  case $stage in suite|device|train|bench|install) ;;
    *) echo "error: unknown stage '$stage' (expected suite, device, train, bench or install)" >&2; exit 2 ;;
  esac
done
if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  echo "error: no wheels in $WHEELS/ (expected the wheels of 'make gpu-wheels', carried to this machine)" >&2; exit 2
fi
mkdir -p "$OUT"
if [ ! -x "$VENV/bin/python" ]; then
  # the image's own packages (CuPy, NCCL, torch) stay visible; the wheels add what it lacks
  python3 -m venv --system-site-packages "$VENV" || exit 1
  "$VENV/bin/python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "$WHEELS"/*.whl \
    || { echo "error: installing the wheels of $WHEELS/ into $VENV failed" >&2; rm -rf "$VENV"; exit 1; }
fi
if [ "$STAGES" = install ]; then echo "venv ready: $VENV"; exit 0; fi
export PATH=$VENV/bin:$PATH PYTHONPATH=$PWD PYTHONUNBUFFERED=1 DDP_REQUIRE_GPU=1 WANDB_MODE=disabled
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
rc=0
for stage in $STAGES; do
  case $stage in
    suite)
      python -m pytest -q -p no:cacheprovider -rs tests 2>&1 | tail -40 > "$OUT/suite.log" || rc=1 ;;
    device)
      DDP_TEST_DEVICE=cupy python -m pytest -q -p no:cacheprovider -rs tests/run tests/test_mpi.py \
        2>&1 | tail -40 > "$OUT/device-tests.log" || rc=1 ;;
    train)
      { python launch.py train experiments/mlp_digits.yaml --out /tmp/gpu1 --overwrite --set backend=cupy
        mpiexec -n 2 python launch.py train experiments/mlp_digits.yaml --out /tmp/gpu2 --overwrite --set backend=cupy
      } 2>&1 | tail -40 > "$OUT/train.log" || rc=1
      cp /tmp/gpu1/summary.json "$OUT/summary-1rank.json" 2>/dev/null
      cp /tmp/gpu2/summary.json "$OUT/summary-2ranks.json" 2>/dev/null ;;
    bench)
      python benchmarks/gpu/bench_gpu.py --out "$OUT/gpu_steps.json" 2>&1 | tee "$OUT/bench.log" || rc=1 ;;
    install) ;;
  esac
done
exit $rc
