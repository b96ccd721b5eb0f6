"""Signals to the launchers a user runs (`launch.py local`, `launch.py scaling`): INT, TERM and
HUP reach every rank, which checkpoint and stop; a second Ctrl-C ends them at once; a rank
killed by SIGKILL ends the job with one line naming it. No rank ever outlives its launcher."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import LAUNCH, ROOT
from ddp_scratch.run import checkpoint as ckpt

LONG = ["experiments/mlp_digits.yaml", "--set", "train.epochs=100000", "--set", "train.checkpoint_every=20"]


def start(args, tmp_path):
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, LAUNCH, *args, "--out", str(out)], cwd=ROOT, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, WANDB_MODE="disabled"))
    deadline = time.time() + 60
    while not (out / "checkpoint.npz").exists():          # every rank is in the training loop
        assert p.poll() is None, p.communicate()
        assert time.time() < deadline, "training did not start"
        time.sleep(0.05)
    return p, out


def ranks_of(out):
    r = subprocess.run(["pgrep", "-f", "--", f"--out {out}"], capture_output=True, text=True)
    return [int(x) for x in r.stdout.split()]


def finish(p, out, timeout=60):
    try:
        stdout, stderr = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in ranks_of(out):
            os.kill(pid, signal.SIGKILL)
        raise
    time.sleep(0.3)
    left = ranks_of(out)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes outlived their launcher: {left}"
    return stdout, stderr


@pytest.mark.parametrize("sig, code, status", [("SIGTERM", 75, "preempted"), ("SIGHUP", 75, "preempted"), ("SIGUSR2", 75, "preempted"),
                                                ("SIGINT", 130, "interrupted")])
def test_a_signal_to_local_checkpoints_every_rank_and_stops(tmp_path, sig, code, status):
    p, out = start(["local", "-n", "2", *LONG, "--quiet"], tmp_path)
    p.send_signal(getattr(signal, sig))
    stdout, stderr = finish(p, out)
    print(sig, p.returncode, stderr)
    assert p.returncode == code
    assert "checkpoint written at step" in stderr and "continue with --resume" in stderr
    assert "mpiexec@" not in stderr + stdout and "=====" not in stderr     # no launcher chatter
    s = json.loads((out / "summary.json").read_text())
    _, meta = ckpt.load(str(out / "checkpoint.npz"))
    assert s["status"] == status and meta["step"] == s["steps"] > 0


def test_a_second_ctrl_c_ends_the_job_at_once(tmp_path):
    p, out = start(["local", "-n", "2", *LONG, "--quiet"], tmp_path)
    p.send_signal(signal.SIGINT)
    time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    finish(p, out, timeout=20)
    assert p.returncode == 130 and time.monotonic() - t0 < 10


def _kill_rank_1(tmp_path):
    p, out = start(["local", "-n", "2", *LONG, "--quiet"], tmp_path)
    ranks = [pid for pid in ranks_of(out) if pid != p.pid and b"PMI_RANK=1\0" in open(f"/proc/{pid}/environ", "rb").read()]
    assert len(ranks) == 1
    t0 = time.monotonic()
    os.kill(ranks[0], signal.SIGKILL)
    _, stderr = finish(p, out, timeout=30)
    print(stderr)
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert time.monotonic() - t0 < 15 and len(lines) == 1, stderr
    ckpt.load(str(out / "checkpoint.npz"))          # the last checkpoint is intact
    return p.returncode, lines[0], ranks[0]


def test_a_rank_killed_by_sigkill_ends_the_job_with_one_line(tmp_path):
    """mpiexec names the killed rank in its banner, or the launcher's watcher saw which rank
    ended first. Known limit: when MPICH aborts the surviving rank in the same instant, before
    mpiexec reports the killed one, the watcher can see the survivor end first (about 1 run in
    25 here) — so a second attempt is allowed, and a third would be a bug."""
    for attempt in range(2):
        rc, line, pid = _kill_rank_1(tmp_path / f"a{attempt}")
        named = (f"error: rank 1 (pid {pid} on {os.uname().nodename}) was killed by SIGKILL; "
                 "mpiexec ended the other ranks (exit status 137)")
        # the two ranks ending within one wake-up of the watcher, with no banner: said, not guessed
        together = re.fullmatch(r"error: rank 0 \(pid \d+\) and rank 1 \(pid \d+\) on \S+ ended at the same "
                                r"moment, one of them first \(killed by a signal or crashed\); mpiexec ended the "
                                r"job \(exit status (\d+)\)", line)
        # rank 1 killed before the launcher's watcher found it (a busy machine): rank 0 reported the
        # failed collective, so the one rank that said nothing is named, from that alone
        deduced = line.startswith("error: rank 1 ended first, without a word") and rc != 0
        if (line == named and rc == 137) or (together and rc == int(together.group(1)) != 0) or deduced:
            return
        assert line.startswith("error: rank 0 ") and rc != 0, line       # the known limit, once
    pytest.fail(f"twice the wrong rank was named: {line}")


def test_a_signal_to_a_scaling_sweep_stops_it_and_keeps_finished_points(tmp_path):
    out = tmp_path / "sweep"
    args = [sys.executable, LAUNCH, "scaling", "experiments/mlp_digits.yaml", "--mode", "weak", "--ranks", "1,2",
            "--steps", "200000", "--warmup", "0", "--out", str(out)]
    p = subprocess.Popen(args, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while len(ranks_of(out)) < 2:                      # the launcher and the point's training process
        assert p.poll() is None and time.time() < deadline, p.communicate()
        time.sleep(0.1)
    time.sleep(1.0)
    p.send_signal(signal.SIGTERM)
    stdout, stderr = finish(p, out)
    print(stdout, stderr)
    assert p.returncode == 75
    assert "scaling: stopped by SIGTERM during point 1/2 (1 rank(s)); the 0 finished point(s)" in stderr
    assert "the same command with --resume continues the sweep" in stderr
    assert "Traceback" not in stderr


def _twice_killed(out, pause=0.3):
    """A launcher whose job (a sleep deaf to the first Ctrl-C, standing in for the ranks at work on
    their checkpoint) is stopped by two Ctrl-C: what it says."""
    code = ("import sys; from ddp_scratch.cli.local import Launch; "
            "sys.exit(Launch(['sh', '-c', 'trap \"\" INT; exec sleep 30'], mpi=False, out=sys.argv[1]).run())")
    p = subprocess.Popen([sys.executable, "-c", code, str(out)], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=ROOT))
    deadline = time.time() + 30
    while not subprocess.run(["pgrep", "-P", str(p.pid), "-x", "sleep"], capture_output=True).stdout:
        assert p.poll() is None and time.time() < deadline, p.communicate()
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    time.sleep(pause)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 130, err
    return err.strip()


def test_a_second_ctrl_c_says_truly_what_stays_and_removes_half_written_temps(tmp_path):
    """The launcher knows --out: after killing the ranks it removes the temp file of a checkpoint
    write they were killed in, and says whether a checkpoint stays, and at which step."""
    out = tmp_path / "o"
    out.mkdir()
    (out / ".lock").write_text("pid 1 on x\n")
    (out / ".checkpoint.npz.abcd1234.tmp").write_bytes(b"PK half")
    err = _twice_killed(out)
    assert err == ("stopped at once by a second signal (SIGINT, SIGINT): the ranks were killed; no checkpoint "
                   f"had been written in {out} yet (a new run starts from step 0)")
    assert sorted(p.name for p in out.iterdir()) == [".lock"]
    from ddp_scratch.run.checkpoint import save
    save(str(out / "checkpoint.npz"), {"params": [0.0]}, {"step": 1234})
    (out / ".summary.json.zz_9_abc.tmp").write_text("{")
    err = _twice_killed(out)
    assert err.endswith(f"the ranks were killed; the checkpoint at step 1,234 in {out} stays (--resume continues from it)")
    assert sorted(p.name for p in out.iterdir()) == [".lock", "checkpoint.npz"]
    (out / "checkpoint.npz").write_bytes(b"garbage")
    assert f"the ranks were killed; checkpoint {out}/checkpoint.npz cannot be read (" in _twice_killed(out)
