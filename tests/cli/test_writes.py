"""Every place the tool writes can be wrong: a read-only place, a full disk (a small tmpfs), a
missing parent. One line, exit 2, and the previous checkpoint and summary stay intact — on one
rank and on two (where rank 0's failed write must not leave rank 1 waiting)."""
import json
import os
import shutil
import subprocess

import pytest

from conftest import run_launch

DIGITS = ["experiments/mlp_digits.yaml", "--quiet"]


@pytest.fixture
def mount(tmp_path):
    """mount(options) -> a fresh tmpfs folder (root only), unmounted at the end."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("these tests need root to mount a small tmpfs")
        pytest.skip("needs root to mount a small tmpfs")
    made = []

    def make(options):
        d = tmp_path / f"fs{len(made)}"
        d.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(d)], check=True)
        made.append(d)
        return d
    yield make
    for d in made:
        subprocess.run(["umount", "-l", str(d)], check=False)


def one_line_error(r, fragment):
    err = r.stderr.strip()
    print(err)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(err.splitlines()) == 1 and err.startswith("error:") and fragment in err, err


@pytest.mark.parametrize("ranks", [0, 2])
def test_a_full_disk_mid_run_keeps_the_previous_checkpoint_and_summary(mount, ranks):
    fs = mount("size=200k")
    out = fs / "run"
    r = run_launch("train", *DIGITS, "--set", "train.max_steps=3", "--out", out, ranks=ranks)
    assert r.returncode == 0, r.stderr
    before = {f: (out / f).read_bytes() for f in ("checkpoint.npz", "summary.json")}
    # a longer run: its first checkpoint cannot be written beside the old one (142 kB each)
    r = run_launch("train", *DIGITS, "--set", "train.max_steps=40", "--set", "train.checkpoint_every=10",
                   "--out", out, "--resume", ranks=ranks, timeout=60)
    one_line_error(r, "No space left on device (the previous file is intact)")
    assert {f: (out / f).read_bytes() for f in before} == before
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")], "a temporary file was left behind"
    assert json.loads(before["summary.json"])["status"] == "completed"


def test_a_read_only_place_is_refused_before_any_work(mount):
    fs = mount("ro,size=1m")
    r = run_launch("train", *DIGITS, "--out", fs / "run")
    one_line_error(r, "cannot write in")
    r = run_launch("local", "-n", "2", *DIGITS, "--out", fs / "run")
    one_line_error(r, "cannot write in")


def test_a_missing_parent_is_created(tmp_path):
    out = tmp_path / "a" / "b" / "c"
    r = run_launch("train", *DIGITS, "--set", "train.max_steps=2", "--out", out)
    assert r.returncode == 0 and (out / "summary.json").exists()


def test_a_report_into_a_full_disk_keeps_the_old_report(mount, tmp_path):
    """The sweep's report rebuilt where there is no room: one line, report.md as it was."""
    fs = mount("size=64k")
    (fs / "runs").mkdir()
    src = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "results", "scaling-cpu-mlp-weak", "runs")
    for f in sorted(os.listdir(src)):
        shutil.copy(os.path.join(src, f), fs / "runs" / f)
    (fs / "report.md").write_text("old report\n")
    with open(fs / "filler", "wb", buffering=0) as f:          # fill the disk to the last block
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    r = run_launch("report", fs)
    one_line_error(r, "No space left on device")
    assert (fs / "report.md").read_text() == "old report\n"
