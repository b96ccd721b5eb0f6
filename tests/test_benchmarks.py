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


def test_gpu_benchmark_runs_but_for_the_gpu(tmp_path):
    """benchmarks/gpu/bench_gpu.py --check: ddp_scratch on the strict CuPy stand-in, torch on the
    CPU, tiny shapes: every path of the GPU benchmark but the GPU, and the result names the
    versions a GPU result must name."""
    require_torch()
    out = tmp_path / "gpu_steps.json"
    env = dict(os.environ, DDP_TEST_DEVICE="strict", OMP_NUM_THREADS="1",
               PYTHONPATH=os.path.join(ROOT, "tests", "strict_device"))
    r = run_group([sys.executable, os.path.join(ROOT, "benchmarks", "gpu", "bench_gpu.py"), "--check", "--steps", "2",
                   "--windows", "1", "--warmup", "1", "--out", str(out)], timeout=300, cwd=ROOT, env=env)
    print(r.stdout[-2000:], r.stderr[-2000:])
    assert r.returncode == 0
    res = json.loads(out.read_text())
    assert res["check"] is True and res["versions"]["device"].startswith("Strict CuPy stand-in")
    assert {"device", "driver", "cuda_runtime", "cupy", "nccl", "mpi", "torch"} <= set(res["versions"])
    for name, unit in (("mlp", "samples"), ("gpt", "tokens")):
        m = res["models"][name]
        assert m["items"] == unit and m["ours_s_per_step"] > 0 and m["torch_s_per_step"] > 0
        assert m["flops_per_step"] > 0 and math.isclose(m["ratio_vs_torch"], m["torch_s_per_step"] / m["ours_s_per_step"])


@pytest.mark.parametrize("argv,why", [(["--steps", "0"], "--steps"), (["--models", "cnn"], "invalid choice"),
                                      (["--warmup", "-1"], "--warmup"), ([], "needs a GPU")])
def test_gpu_benchmark_bad_arguments_are_one_line(argv, why, tmp_path):
    require_torch()
    r = run_group([sys.executable, os.path.join(ROOT, "benchmarks", "gpu", "bench_gpu.py"), *argv,
                   "--out", str(tmp_path / "x.json")], timeout=120, cwd=ROOT, env=dict(os.environ))
    assert r.returncode == 2 and why in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "x.json").exists()


def test_device_script_is_valid_bash_and_names_only_files_that_exist():
    import re
    import subprocess
    path = os.path.join(ROOT, "benchmarks", "gpu", "device_run.sh")
    assert subprocess.run(["bash", "-n", path]).returncode == 0
    text = open(path).read()
    named = set(re.findall(r"\b((?:tests|benchmarks|experiments)/[\w./-]+\.(?:py|yaml|sh))\b", text)) | \
        set(re.findall(r"\btests/[\w/]+(?=[\s\\])", text))
    print(sorted(named))
    assert named and all(os.path.exists(os.path.join(ROOT, p)) for p in named), \
        [p for p in named if not os.path.exists(os.path.join(ROOT, p))]
    # the stage names it documents are the ones it runs
    assert re.findall(r"STAGES:-\"([a-z ]+)\"", text)[0].split() == ["suite", "device", "train", "bench"]


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


def _tiny_wheel(folder):
    """A real (hand-packed) pure-Python wheel: what `make gpu-wheels` brings, without a network."""
    import zipfile
    folder.mkdir()
    path = folder / "gpuprobe-0.1-py3-none-any.whl"
    files = {"gpuprobe/__init__.py": "VALUE = 42\n",
             "gpuprobe-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: gpuprobe\nVersion: 0.1\n",
             "gpuprobe-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{n},,\n" for n in files) + "gpuprobe-0.1.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for n, text in {**files, "gpuprobe-0.1.dist-info/RECORD": record}.items():
            z.writestr(n, text)
    return folder


def test_device_script_installs_the_carried_wheels_into_a_venv_that_sees_the_image(tmp_path):
    """The device script's first step, on the CPU: a venv over the image's packages (here this
    machine's: numpy must stay importable, as CuPy and torch must on the GPU image) with the
    carried wheels installed offline; a second call reuses it."""
    import subprocess
    script = os.path.join(ROOT, "benchmarks", "gpu", "device_run.sh")
    env = dict(os.environ, VENV=str(tmp_path / "venv"), WHEELS=str(_tiny_wheel(tmp_path / "whl")),
               STAGES="install", OUT=str(tmp_path / "out"), PIP_NO_INDEX="1")
    # the image's python3 is the one with the packages: here, the test's own interpreter's folder first
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    for _ in range(2):
        r = subprocess.run(["bash", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and "venv ready" in r.stdout, r.stdout + r.stderr
    py = tmp_path / "venv" / "bin" / "python"
    r = subprocess.run([str(py), "-c", "import gpuprobe, numpy; print(gpuprobe.VALUE)"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "42", r.stderr


@pytest.mark.parametrize("change, why", [
    ({"WHEELS": "nowhere"}, "error: no wheels in nowhere/ (expected the wheels of 'make gpu-wheels'"),
    ({"STAGES": "suite bnech"}, "error: unknown stage 'bnech' (expected suite, device, train, bench or install)"),
])
def test_device_script_refuses_bad_input_in_one_line(change, why, tmp_path):
    import subprocess
    script = os.path.join(ROOT, "benchmarks", "gpu", "device_run.sh")
    env = dict(os.environ, VENV=str(tmp_path / "venv"), WHEELS=str(_tiny_wheel(tmp_path / "whl")),
               OUT=str(tmp_path / "out"))
    env.update(change)
    r = subprocess.run(["bash", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith(why) and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "venv").exists() and not (tmp_path / "out").exists()


def test_ring_allreduce_benchmark_runs_and_counts_its_bytes(tmp_path):
    """bench_allreduce.py's ring part, one short window each: every variant timed against MPI's
    Allreduce, and the bytes each rank sent are the ring's 2(N-1)/N of the buffer (16-bit: half,
    the 5 statistic slots in float32)."""
    cmd = [mpiexec(), "-n", "2", sys.executable, os.path.join(ROOT, "benchmarks", "bench_allreduce.py"),
           "--windows", "1", "--max-windows", "1", "--sweep-windows", "1", "--max-bytes", "4096",
           "--ring-windows", "1", "--window-s", "0.02", "--ring-sweep"]
    r = run_group(cmd, timeout=300, cwd=ROOT, env=dict(os.environ, BENCH_RESULTS_DIR=str(tmp_path), OMP_NUM_THREADS="1"))
    print(r.stdout[-3000:], r.stderr[-3000:])
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "allreduce.json").read_text())
    n = res["mlp_grads"]["elements"]
    assert set(res["ring"]) == {"float32", "bf16", "fp16"}
    assert res["ring"]["float32"]["bytes_sent_per_call"] == pytest.approx(n * 4, abs=8)     # 2(N-1)/N = 1 at N=2
    for k in ("bf16", "fp16"):
        assert res["ring"][k]["bytes_sent_per_call"] == pytest.approx((n - 5) * 2 + 5 * 4, abs=8)
    assert all(g["ratio"] > 0 and g["ddp_scratch_us"] > 0 for g in res["ring"].values())
    assert res["sweep"][0]["ring_us"] > 0


def test_end_to_end_benchmark_runs_both_commands_on_the_same_job(tmp_path):
    """bench_e2e.py at its smallest: launch.py train and torch_train.py run the same 3 steps of the
    same config, 2 ranks each (torch: DDP over gloo), and the result holds both sides' wall and step
    times, the per-round ratio and both test accuracies."""
    require_torch()
    from conftest import need_fashion
    need_fashion()
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_e2e.py"), "--ranks", "2", "--rounds", "1",
           "--no-wait", "--set", "train.max_steps=3", "--set", "train.threads=1"]
    r = run_group(cmd, timeout=300, cwd=ROOT, env=dict(os.environ, BENCH_RESULTS_DIR=str(tmp_path)))
    print(r.stdout[-3000:], r.stderr[-3000:])
    assert r.returncode == 0, r.stderr[-2000:]
    pt = json.loads((tmp_path / "e2e.json").read_text())["points"]["2"]
    rnd = pt["rounds"][0]
    assert pt["steps"] == 3 and math.isclose(pt["ratio_median"], rnd["torch"]["wall_s"] / rnd["ddp_scratch"]["wall_s"])
    for side in ("ddp_scratch", "torch"):
        assert rnd[side]["steps"] == 3 and 0 < rnd[side]["train_s"] < rnd[side]["wall_s"]
        assert 0.0 < rnd[side]["test_accuracy"] <= 1.0


def test_trainer_overhead_benchmark_compares_like_with_like(tmp_path):
    """bench_trainer.py: the trainer's step, the bare step and torch's drive the same weights on the
    same batch (the same first loss); every phase of the trainer's step is in its profile."""
    require_torch()
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_trainer.py"), "--config",
           os.path.join(ROOT, "experiments", "mlp_digits.yaml"), "--threads", "1", "--reps", "2", *SHORT]
    r = run_group(cmd, timeout=300, cwd=ROOT, env=dict(os.environ, BENCH_RESULTS_DIR=str(tmp_path)))
    print(r.stdout[-3000:], r.stderr[-3000:])
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "trainer_overhead.json").read_text())
    assert res["check"]["rel_diff"] < 1e-6, res["check"]
    assert set(res["step_ms"]) == {"bare", "trainer", "torch"} and math.isfinite(res["overhead"])
    p = res["profile_ms"]
    assert {"batch gather", "forward + loss", "backward", "optimizer step", "step"} <= set(p["trainer"])
    assert p["trainer"]["batch gather"] > 0 and "batch gather" not in p["torch"]
    assert math.isclose(res["overhead_in_place"], res["extra_ms_in_place"] / p["bare"]["step"])
