"""slurm/train.sbatch and slurm/sweep_array.sbatch on the dev cluster.

The template tests run tests/slurm/stub_launch.py (LAUNCH=...), which keeps launch.py's contract
(stop signal -> checkpoint -> exit 75; --resume) with a predictable pace; the last test runs the
real launch.py through the same template.
"""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TRAIN = "slurm/train.sbatch"
SWEEP = "slurm/sweep_array.sbatch"
REPO = Path(__file__).resolve().parents[2]


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


POINT = ("--quiet --set train.epochs=0 --set train.max_steps=12 --set train.timing_skip=2 "
         "--set train.checkpoint_every=0 --set train.check_every=0 --set logging.progress=false")


@pytest.mark.timeout(150)
def test_sweep_array_points_become_a_scaling_report(slurm, tmp_path):
    """The array sweep with SWEEP_DIR and MODE: each element trains its point (its own RANKS and
    extra args), files it with `launch.py sweep-point`, and `launch.py report` reads them."""
    sweep, points = tmp_path / "weak", tmp_path / "points.txt"
    points.write_text(f"""# ranks config out extra
1  experiments/mlp_digits.yaml  {sweep}/points/n1  --set train.batch_size=32 {POINT}

2  experiments/mlp_digits.yaml  {sweep}/points/n2  --set train.batch_size=64 {POINT}
""")
    job = slurm.sbatch(_export(slurm), "--array=1-2", "--ntasks=2", f"--output={tmp_path}/sweep-%A_%a.out",
                       SWEEP, points, sweep, "weak")
    states = slurm.wait(job, timeout=120)
    logs = "".join(p.read_text() for p in sorted(tmp_path.glob("sweep-*.out")))
    assert states == {f"{job}_1": "COMPLETED", f"{job}_2": "COMPLETED"}, logs
    for n, gb in ((1, 32), (2, 64)):        # each element ran its own line
        s = json.loads((sweep / "points" / f"n{n}" / "summary.json").read_text())
        assert (s["world_size"], s["global_batch"], s["steps"]) == (n, gb, 12)
    assert sorted(p.name for p in (sweep / "runs").glob("*.json")) == [
        "mlp_digits-weak-n1-r0.json", "mlp_digits-weak-n2-r0.json"], logs
    r = subprocess.run([slurm.python, "launch.py", "report", str(sweep)], cwd=slurm.repo,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader((sweep / "scaling.csv").open()))
    assert [(r["mode"], r["config"], r["world_size"], r["baseline_world"]) for r in rows] == [
        ("weak", "mlp_digits", "1", "1"), ("weak", "mlp_digits", "2", "1")]
    assert all(float(r[k]) > 0 for r in rows for k in ("samples_per_s_mean", "speedup_mean", "efficiency_mean")), rows
    report = (sweep / "report.md").read_text()
    assert "2 runs from `runs/`" in report and "weak:mlp_digits" in report


def test_sweep_point_refuses_what_is_not_a_finished_run(tmp_path):
    """`launch.py sweep-point` bad input: one line, exit 2, nothing written."""
    run = tmp_path / "run"
    run.mkdir()
    for summary, expected in [(None, "summary.json not found"),
                              ({"status": "preempted", "world_size": 2}, "status 'preempted', expected a completed run"),
                              ({"status": "completed", "world_size": 1, "global_batch": 8, "timing": {}}, "timed no steps"),
                              ({"status": "completed"}, "lacks what a scaling point needs")]:
        if summary is not None:
            (run / "summary.json").write_text(json.dumps(summary))
        r = subprocess.run([sys.executable, str(REPO / "launch.py"), "sweep-point", str(run), "--into",
                            str(tmp_path / "sweep"), "--mode", "weak", "--name", "mlp"],
                           capture_output=True, text=True, timeout=60)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: sweep-point"), r.stderr
        assert expected in lines[0], lines[0]
    assert not (tmp_path / "sweep").exists()


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
