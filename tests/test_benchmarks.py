"""The 2-rank benchmarks stay runnable and keep comparing like with like: one short window each,
with torch DDP (gloo) as the peer, must start from the same loss and end with the same
parameters as ddp_scratch (float32 rounding). Speed is not judged here (benchmarks/ does that)."""
import json
import math
import os
import sys

import pytest

from conftest import ROOT, mpiexec, require_torch, run_group

SHORT = ["--windows", "1", "--max-windows", "1", "--steps", "2", "--warmup", "1"]


@pytest.mark.parametrize("script,out,sides", [
    ("bench_mlp.py", "mlp_ddp.json", ("ddp_scratch", "torch_ddp_gloo")),
    ("bench_gpt.py", "gpt_ddp.json", ("ddp_scratch", "torch_ddp_gloo")),
])
def test_two_rank_benchmark_against_torch_ddp(script, out, sides, tmp_path):
    require_torch()
    extra = ["--no-wait"] if script == "bench_gpt.py" else ["--overlap"]
    cmd = [mpiexec(), "-n", "2", sys.executable, os.path.join(ROOT, "benchmarks", script), "ddp", *SHORT, *extra]
    env = dict(os.environ, BENCH_RESULTS_DIR=str(tmp_path), OMP_NUM_THREADS="1")
    r = run_group(cmd, timeout=300, cwd=ROOT, env=env)
    print(r.stdout[-3000:], r.stderr[-3000:])
    assert r.returncode == 0, r.stderr[-2000:]
    with open(tmp_path / out) as f:
        res = json.load(f)
    res = res.get("result", res)
    assert res["world_size"] == 2 and set(sides) <= set(res["sides"])
    c = res["check"]
    assert c["rel_diff"] < 1e-5, c                  # same weights, same batches: same first loss
    assert c["param_max_abs_diff_after"] < 1e-4, c  # and the same training, up to float32 rounding
    assert res["ratio"] > 0
    if script == "bench_mlp.py":     # the overlapped side trained the same way, and its waits were timed
        assert res["overlap_vs_blocking"] > 0 and res["comm_wait_ms_per_step"]["ddp_scratch_overlap"] >= 0
        assert math.isfinite(res["comm_hidden_fraction"])   # a noisy ratio of two timings: benchmarks/ judges it


def test_cnn_benchmark_compares_like_with_like(tmp_path):
    """bench_cnn.py: torch holds LeNet-5's weights (the first Linear's rows permuted from our
    channels-last flatten order), so both start from the same loss; the profile's parts add up."""
    require_torch()
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_cnn.py"), "--batch", "8", *SHORT]
    env = dict(os.environ, BENCH_RESULTS_DIR=str(tmp_path))
    r = run_group(cmd, timeout=300, cwd=ROOT, env=env)
    print(r.stdout[-3000:], r.stderr[-3000:])
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "cnn_single.json").read_text())
    assert res["check"]["rel_diff"] < 1e-5, res["check"]
    assert set(res["sides"]) == {"ddp_scratch", "torch"} and res["ratio"] > 0
    total = sum(p["ms"] for p in res["profile"])
    assert math.isclose(sum(res["breakdown_ms"].values()), total, rel_tol=1e-9)
    assert all(0 <= p["gemm_ms"] <= p["ms"] for p in res["profile"])
    assert res["torch_profile"] and "where the time goes" in r.stdout
