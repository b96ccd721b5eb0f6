"""`launch.py local -n N`: spawns mpiexec with the same interpreter, forwards the exit status, and
one Ctrl-C (SIGINT to the launcher) ends every rank."""
import os
import signal
import subprocess
import sys
import time

from conftest import LAUNCH, ROOT


def test_local_forwards_exit_status(tmp_path, launch):
    r = launch("local", "-n", 2, "experiments/mlp_digits.yaml", "--out", tmp_path, "--quiet",
               "--set", "train.max_steps=4")
    assert r.returncode == 0, r.stderr
    r = launch("local", "-n", 2, "experiments/mlp_digits.yaml", "--out", tmp_path / "b", "--quiet",
               "--set", "train.batch_size=1")
    assert r.returncode == 2 and r.stderr.count("error:") == 1


def test_one_ctrl_c_ends_all_ranks(tmp_path):
    out = tmp_path / "o"
    p = subprocess.Popen([sys.executable, LAUNCH, "local", "-n", "2", "experiments/mlp_digits.yaml",
                          "--out", str(out), "--quiet", "--set", "train.epochs=100000"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, env=dict(os.environ, WANDB_MODE="disabled"))
    try:
        deadline = time.time() + 30
        while time.time() < deadline and not _ranks(out):
            time.sleep(0.2)
        assert len(_ranks(out)) == 2
        time.sleep(0.5)
        p.send_signal(signal.SIGINT)                 # what a terminal's Ctrl-C sends to the launcher
        rc = p.wait(timeout=20)
        assert rc == 130
        time.sleep(0.5)
        assert _ranks(out) == [], "ranks outlived the Ctrl-C"
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        for pid in _ranks(out):
            os.kill(pid, signal.SIGKILL)


def _ranks(out):
    r = subprocess.run(["pgrep", "-f", "--", f"^\\S*python\\S* \\S*launch.py train .*--out {out}"], capture_output=True, text=True)
    return [int(x) for x in r.stdout.split()]
