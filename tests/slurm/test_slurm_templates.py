"""slurm/train.sbatch and slurm/sweep_array.sbatch on the dev cluster.

The template tests run tests/slurm/stub_launch.py (LAUNCH=...), which keeps launch.py's contract
(stop signal -> checkpoint -> exit 75; --resume) with a predictable pace; the last test runs the
real launch.py through the same template.
"""
import json

import numpy as np
import pytest

TRAIN = "slurm/train.sbatch"
SWEEP = "slurm/sweep_array.sbatch"


def _export(slurm, **extra):
    env = {"PYTHON": slurm.python, **extra}
    return "--export=ALL," + ",".join(f"{k}={v}" for k, v in env.items())


@pytest.mark.timeout(150)
def test_train_template_usr1_checkpoints_requeues_and_resumes(slurm, tmp_path):
    log, out = tmp_path / "train.out", tmp_path / "run"
    job = slurm.sbatch(_export(slurm, LAUNCH=slurm.stub_launch), f"--output={log}",
                       TRAIN, "cfg.yaml", out, "--steps", "100", "--set", "a=1")
    slurm.wait_for_text(log, r"start step 0 restart 0", count=2, timeout=60)
    # what Slurm does 120 s before the time limit (--signal=B:USR1@120): signal the batch script
    slurm.scancel("--signal=USR1", "--batch", job)
    assert slurm.wait(job, timeout=120) == "COMPLETED", log.read_text()
    text = log.read_text()
    assert "training exited with status 75" in text
    assert "requeueing job" in text
    assert "restart 1" in text
    resumed = [int(line.split("start step ")[1].split()[0])
               for line in text.splitlines() if "restart 1 set=" in line]
    assert len(resumed) == 2 and resumed[0] == resumed[1] > 0, text    # both ranks, same step
    ck = json.loads((out / "ckpt.json").read_text())
    assert ck == {"step": 100, "world": 2, "set": ["a=1"], "done": True}


@pytest.mark.timeout(120)
def test_train_template_scancel_is_not_requeued(slurm, tmp_path):
    log, out = tmp_path / "train.out", tmp_path / "run"
    job = slurm.sbatch(_export(slurm, LAUNCH=slurm.stub_launch), f"--output={log}",
                       TRAIN, "cfg.yaml", out, "--steps", "1000")
    slurm.wait_for_text(log, r"start step 0 restart 0", count=2, timeout=60)
    slurm.scancel(job)
    assert slurm.wait(job, timeout=60) == "CANCELLED", log.read_text()
    assert "checkpoint written; requeueing" not in log.read_text()


@pytest.mark.timeout(120)
def test_sweep_array_runs_one_point_per_element(slurm, tmp_path):
    points = tmp_path / "points.txt"
    points.write_text(f"""# ranks config out extra
1  cfg.yaml  {tmp_path}/r1  --steps 5 --set x=1

2  cfg.yaml  {tmp_path}/r2  --steps 5 --set x=2 --set y=3
""")
    job = slurm.sbatch(_export(slurm, LAUNCH=slurm.stub_launch), "--array=1-2", "--ntasks=2",
                       f"--output={tmp_path}/sweep-%A_%a.out", SWEEP, points)
    states = slurm.wait(job, timeout=90)
    assert states == {f"{job}_1": "COMPLETED", f"{job}_2": "COMPLETED"}, states
    r1 = json.loads((tmp_path / "r1" / "ckpt.json").read_text())
    r2 = json.loads((tmp_path / "r2" / "ckpt.json").read_text())
    assert (r1["world"], r1["set"]) == (1, ["x=1"])
    assert (r2["world"], r2["set"]) == (2, ["x=2", "y=3"])


@pytest.mark.timeout(240)
def test_train_template_with_launch_py_resumes_after_usr1(slurm, tmp_path):
    """The real trainer: SIGUSR1 -> checkpoint, exit 75 -> requeue -> --resume -> completed."""
    log, out = tmp_path / "train.out", tmp_path / "run"
    job = slurm.sbatch(_export(slurm), f"--output={log}", TRAIN, "experiments/mlp_digits.yaml", out,
                       "--set", "train.epochs=400")
    slurm.wait_for_text(log, r"^step \d+/", timeout=90)     # training is under way
    slurm.scancel("--signal=USR1", "--batch", job)
    assert slurm.wait(job, timeout=180) == "COMPLETED", log.read_text()
    text = log.read_text()
    assert "training exited with status 75" in text and "restart 1" in text, text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["world_size"] == 2
    assert summary["resumed_from_step"] > 0
    # the preempted, requeued and resumed job ends exactly where an uninterrupted run does
    from conftest import run_launch
    ref = tmp_path / "ref"
    r = run_launch("train", "experiments/mlp_digits.yaml", "--out", ref, "--quiet", "--set", "train.epochs=400",
                   ranks=2, timeout=120)
    assert r.returncode == 0, r.stderr
    a = np.load(out / "checkpoint.npz", allow_pickle=False)["params"]
    b = np.load(ref / "checkpoint.npz", allow_pickle=False)["params"]
    assert np.array_equal(a, b)
