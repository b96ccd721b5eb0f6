"""A run's life as a user lives it: the start-up text, one progress display, validation when
configured, stop anywhere, resume, resume again once done; the summary of a stopped-and-resumed
run equals the uninterrupted one's (timings aside), on 1 and 2 ranks."""
import json
import os

import pytest

from conftest import BACKEND, run_launch

ARGS = ["experiments/mlp_digits.yaml", "--set", "train.epochs=3", "--set", "optim.name=adamw",
        "--set", "optim.lr=0.003", "--set", "train.grad_clip=1.0"]
TIMING = ("samples_per_s", "tokens_per_s")      # differ between any two runs


def summary(out):
    return json.loads((out / "summary.json").read_text())


def snapshot(folder):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def curve(s):
    return [{k: v for k, v in rec.items() if k not in TIMING} for rec in s["history"]]


@pytest.mark.device_agnostic("a finished run's resume ends before any array work")
@pytest.mark.parametrize("ranks", [0, 2])
def test_resume_of_a_complete_run_says_so_and_changes_nothing(tmp_path, ranks):
    out = tmp_path / "done"
    assert run_launch("train", *ARGS, "--set", "train.max_steps=6", "--out", out, ranks=ranks).returncode == 0
    before = snapshot(out)
    r = run_launch("train", *ARGS, "--set", "train.max_steps=6", "--out", out, "--resume", ranks=ranks)
    print(r.stdout, r.stderr)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("already complete at step 6") == 1 and not r.stderr
    assert snapshot(out) == before, "a resume of a finished run changed its files"


@pytest.mark.parametrize("ranks", [0, 2])
def test_a_stop_before_the_first_evaluation_writes_a_valid_summary(tmp_path, ranks):
    out = tmp_path / "early"
    r = run_launch("train", *ARGS, "--out", out, "--stop-at-step", 1, ranks=ranks)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "Abort" not in r.stderr
    s = summary(out)
    assert s["status"] == "stopped" and s["steps"] == 1 and s["history"] == []
    assert isinstance(s["train_loss"], float) and s["test_accuracy"] is None
    assert "stopped: step 1/57, train_loss" in r.stdout and "(mean of the 1 step run)" in r.stdout


@pytest.mark.device_agnostic("the label counts steps on the host (a stopped run's loss on a device: "
                              "test_a_stop_before_the_first_evaluation_writes_a_valid_summary)")
def test_the_final_line_says_what_its_train_loss_is_the_mean_of(tmp_path):
    """No epoch ended (max_steps 5 = 0.26 epochs), or stopped with no validation yet: the label says so."""
    r = run_launch("train", *ARGS, "--set", "train.max_steps=5", "--out", tmp_path / "m")
    assert r.returncode == 0, r.stderr
    assert "completed: step 5/5, train_loss" in r.stdout and "(mean of the 5 steps run), test_accuracy" in r.stdout
    assert summary(tmp_path / "m")["train_loss_over"] == "mean of the 5 steps run"
    r = run_launch("train", *ARGS, "--out", tmp_path / "s", "--stop-at-step", 5)
    assert "stopped: step 5/57, train_loss" in r.stdout and "(mean of the 5 steps run)" in r.stdout


def test_train_loss_labels_are_true_for_every_position():
    from ddp_scratch.run.summary import train_loss_over as over
    spe = 19
    assert over(19, 19, spe, 19) == over(38, 19, spe, 40) == "last epoch's mean"      # the last epoch that ended
    assert over(19, 19, spe, 40) == "epoch 1's mean"              # a later epoch ended without a record
    assert over(5, 5, spe, 5) == "mean of the 5 steps run" and over(1, 1, spe, 1) == "mean of the 1 step run"
    assert over(5, 5, spe, 7) == "mean of epoch 1's first 5 steps, at step 5"      # stopped after a mid-epoch record
    assert over(25, 6, spe, 25) == "mean of epoch 2's first 6 steps"
    from ddp_scratch.run.progress import final_line
    line = final_line({"status": "stopped", "steps": 5, "total_steps": 57, "train_loss": 2.5,
                       "train_loss_over": "mean of the 5 steps run"}, "o")
    assert line == "stopped: step 5/57, train_loss 2.5 (mean of the 5 steps run) -> o/summary.json"


@pytest.mark.parametrize("ranks", [0, 2])
def test_the_summary_of_a_resumed_run_covers_the_whole_run(tmp_path, ranks):
    full, split = tmp_path / "full", tmp_path / "split"
    assert run_launch("train", *ARGS, "--out", full, "--quiet", ranks=ranks).returncode == 0
    for stop in (10, 30):       # mid-epoch and right after an epoch's validation
        r = run_launch("train", *ARGS, "--out", split, "--quiet", "--stop-at-step", stop,
                       *(["--resume"] if stop > 10 else []), ranks=ranks)
        assert r.returncode == 0, r.stderr
    assert run_launch("train", *ARGS, "--out", split, "--quiet", "--resume", ranks=ranks).returncode == 0
    a, b = summary(full), summary(split)
    assert curve(a) == curve(b) and len(a["history"]) == 3
    for k in ("status", "steps", "epochs", "train_loss", "val_loss", "val_accuracy", "test_loss",
              "test_accuracy", "skipped_steps", "n_params"):
        assert a[k] == b[k], k
    assert b["resumed_from_step"] == 30 and b["wall_s"] > b["wall_s_this_run"]


@pytest.mark.device_agnostic("which steps evaluate is counted on the host (evaluation on a device: test_trainer.py)")
def test_validation_runs_exactly_when_configured(tmp_path):
    out = tmp_path / "ev"
    r = run_launch("train", *ARGS, "--set", "train.eval_every=7", "--set", "train.epochs=2", "--out", out)
    assert r.returncode == 0, r.stderr
    assert [h["step"] for h in summary(out)["history"]] == [7, 14, 21, 28, 35, 38]
    r = run_launch("train", *ARGS, "--set", "train.epochs=2", "--out", tmp_path / "ep")
    assert [h["step"] for h in summary(tmp_path / "ep")["history"]] == [19, 38]


def test_start_up_text_says_what_is_about_to_happen(tmp_path):
    out = tmp_path / "st"
    r = run_launch("train", *ARGS, "--out", out, "--stop-at-step", 5, ranks=2)
    head = r.stdout.split("\n")[:6]
    print("\n".join(head))
    assert head[0].startswith("ddp_scratch: 2 ranks on 1 node (") and f"{BACKEND} on" in head[0]
    assert "thread(s) per rank" in head[0]
    assert "model: mlp 64-128-64-10 (relu), 17,226 parameters, float32; optimizer adamw, lr 0.003" in head[1]
    assert "data:  digits: 1,258 train / 180 val / 359 test rows, 64 features, 10 classes" in head[2]
    assert "batch: 64 global = 32 per rank; 57 steps = 3 epochs of 19 steps; validation every epoch" in head[3]
    assert head[4] == "  comm:  MPI_Allreduce"
    assert head[5] == f"  out:   {out}"
    r = run_launch("train", *ARGS, "--out", out, "--resume", ranks=2)
    assert "(resuming from step 5)" in r.stdout and r.stdout.count("ddp_scratch:") == 1


def test_progress_in_a_log_is_about_ten_lines_and_names_its_units(tmp_path):
    r = run_launch("train", "experiments/gpt_addition.yaml", "--set", "train.max_steps=60", "--set",
                   "model.n_layer=1", "--set", "model.d_model=16", "--set", "model.n_head=2",
                   "--set", "train.log_every=1", "--out", tmp_path / "g")
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("step ")]
    print("\n".join(lines))
    assert 8 <= len(lines) <= 11 and all("tokens/s" in ln for ln in lines)
    assert lines[-1].startswith("step 60/60") and "val_exact_match" in lines[-1]
    s = summary(tmp_path / "g")
    assert all("tokens_per_s" in h and "samples_per_s" not in h for h in s["history"])
    assert "completed: step 60/60" in r.stdout and "test_exact_match" in r.stdout and "tokens/s" in r.stdout


@pytest.mark.device_agnostic("the progress display")
def test_a_terminal_gets_one_live_bar(tmp_path):
    r = run_launch("train", *ARGS, "--out", tmp_path / "tty", env={"DDP_PROGRESS": "tty"})
    assert r.returncode == 0
    # (text mode turns the bar's carriage returns into newlines; the erase-line code stays)
    assert r.stderr.count("\x1b[K") >= 2 and not any(ln.startswith("step ") for ln in r.stderr.splitlines())


def test_eta_counts_only_the_steps_this_process_ran(monkeypatch):
    import io
    from ddp_scratch.run import progress
    clock = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    out = io.StringIO()
    p = progress.Progress(total=1000, start=900, stream=out)     # resumed at step 900
    clock[0] += 10.0                                             # 10 s for 10 steps
    p.update(910, 1.0, 0.5, 100.0)
    assert "eta 1m30s" in out.getvalue()                         # 90 steps left at 1 step/s


@pytest.mark.device_agnostic("the checkpoint's metadata (a resumed history on a device: "
                              "test_the_summary_of_a_resumed_run_covers_the_whole_run)")
def test_history_kept_in_the_checkpoint(tmp_path):
    from ddp_scratch.run import checkpoint as ckpt
    out = tmp_path / "h"
    assert run_launch("train", *ARGS, "--out", out, "--stop-at-step", 25).returncode == 0
    _, meta = ckpt.load(str(out / "checkpoint.npz"))
    assert [h["step"] for h in meta["run"]["history"]] == [19] and meta["run"]["ep_steps"] == 6
    assert os.path.exists(out / "summary.json")


@pytest.mark.device_agnostic("the lock on --out")
def test_a_second_run_into_a_folder_in_use_is_refused(tmp_path):
    import subprocess
    import sys
    import time
    from conftest import LAUNCH, ROOT
    out = tmp_path / "busy"
    p = subprocess.Popen([sys.executable, LAUNCH, "train", "experiments/mlp_digits.yaml", "--quiet", "--out", str(out),
                          "--set", "train.epochs=100000"], cwd=ROOT)
    try:
        deadline = time.time() + 60
        while not (out / ".lock").exists() or not (out / ".lock").read_text():
            assert p.poll() is None and time.time() < deadline
            time.sleep(0.05)
        r = run_launch("train", "experiments/mlp_digits.yaml", "--out", out, "--overwrite")
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
        assert f"--out {out}: another run (pid {p.pid} on " in r.stderr and "is writing there now" in r.stderr
    finally:
        p.kill()
        p.wait()
    r = run_launch("train", "experiments/mlp_digits.yaml", "--out", out, "--overwrite", "--set", "train.max_steps=2")
    assert r.returncode == 0, r.stderr          # the lock died with its process


@pytest.mark.device_agnostic("the resume's choice of length")
def test_a_stopped_run_whose_length_was_reached_is_finished_on_resume(tmp_path):
    out = tmp_path / "short"
    assert run_launch("train", *ARGS, "--out", out, "--stop-at-step", 30).returncode == 0
    r = run_launch("train", *ARGS, "--set", "train.max_steps=30", "--out", out, "--resume")
    assert r.returncode == 0 and "already complete" not in r.stdout
    assert "note: this run had 57 steps (it stopped at step 30); the config now asks for 30: it ends at step 30" in r.stdout
    s = summary(out)
    assert s["status"] == "completed" and s["steps"] == 30 and s["test_accuracy"] is not None
    assert s["history"][-1]["step"] == 30
    r = run_launch("train", *ARGS, "--set", "train.max_steps=30", "--out", out, "--resume")
    assert "already complete at step 30" in r.stdout


@pytest.mark.device_agnostic("refused before any array work")
@pytest.mark.parametrize("ranks", [0, 2])
def test_a_resume_whose_config_ends_before_the_checkpoint_is_refused(tmp_path, ranks):
    """Stopped at step 30 of 57; the config now ends at 19: one line saying how to go on, nothing
    written (it used to report 'completed: step 30/19')."""
    out = tmp_path / "past"
    assert run_launch("train", *ARGS, "--out", out, "--stop-at-step", 30, "--quiet").returncode == 0
    before = snapshot(out)
    for extra, hint in ((["--set", "train.epochs=1"], "train.epochs=3: resume with --set train.epochs=3 ("),
                        (["--set", "train.max_steps=29"], "train.max_steps=0: resume with --set train.max_steps=0 ("),
                        (["--set", "train.max_steps=29", "--stop-at-step", "40"], "--set train.max_steps=0")):
        r = run_launch("train", *ARGS, *extra, "--out", out, "--resume", ranks=ranks)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and not r.stdout, r.stderr
        assert f"error: checkpoint {out}/checkpoint.npz is at step 30, beyond the end of this config's run" in r.stderr
        assert hint in r.stderr and "or start afresh with --overwrite" in r.stderr
    assert snapshot(out) == before
    r = run_launch("train", *ARGS, "--out", out, "--resume", "--stop-at-step", 31, ranks=ranks)
    assert r.returncode == 0 and "stopped: step 31/57" in r.stdout


@pytest.mark.device_agnostic("the note on resume")
def test_a_resume_that_changes_a_schedule_says_so(tmp_path):
    out = tmp_path / "sched"
    cos = [*ARGS, "--set", "optim.schedule=cosine", "--out", out]
    assert run_launch("train", *cos, "--stop-at-step", 10).returncode == 0
    r = run_launch("train", *cos, "--set", "train.epochs=6", "--resume", "--quiet")
    assert r.returncode == 0 and not r.stderr
    assert ("note: this run had 57 steps (it stopped at step 10); the config now asks for 114: training on from "
            "step 10 to 114 (to keep its 57 steps, resume with --set train.epochs=3); the cosine learning-rate "
            "schedule follows the new length from step 10") in r.stdout


@pytest.mark.device_agnostic("the note on resume")
def test_a_complete_run_extended_on_resume_says_so_before_training(tmp_path):
    out = tmp_path / "ext"
    assert run_launch("train", *ARGS, "--set", "train.max_steps=6", "--out", out, "--quiet").returncode == 0
    r = run_launch("train", *ARGS, "--set", "train.max_steps=8", "--out", out, "--resume")
    assert r.returncode == 0, r.stderr
    note = ("note: this run had 6 steps and is complete; the config now asks for 8: training on from step 6 to 8 "
            "(to keep it as it was, resume with --set train.max_steps=6)")
    assert r.stdout.splitlines()[0].startswith(note) and r.stdout.count("note:") == 1
    assert summary(out)["steps"] == 8


@pytest.mark.device_agnostic("the files in --out")
def test_taking_the_lock_removes_temp_files_of_a_killed_write(tmp_path):
    out = tmp_path / "stale"
    out.mkdir()
    stale = [".checkpoint.npz.k3_x9abc.tmp", ".summary.json.0123abcd.tmp"]
    kept = [".notes.txt.abcdefgh.tmp", "checkpoint.npz.abcdefgh.tmp", ".checkpoint.npz.short.tmp", "mine.tmp"]
    for name in stale + kept:
        (out / name).write_text("x")
    r = run_launch("train", *ARGS, "--set", "train.max_steps=2", "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([".lock", "checkpoint.npz", "summary.json", *kept])


@pytest.mark.device_agnostic("the parsing of flags")
def test_integer_flags_take_any_notation(tmp_path):
    r = run_launch("train", *ARGS, "--out", tmp_path / "n", "--stop-at-step", "1e1")
    assert r.returncode == 0 and summary(tmp_path / "n")["steps"] == 10


@pytest.mark.device_agnostic("the launcher's warning")
def test_oversubscribing_the_cores_is_warned_once(tmp_path):
    r = run_launch("local", "-n", str(os.cpu_count() + 1), *ARGS, "--set", "train.max_steps=2", "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("warning: local:") == 1 and "they share cores" in r.stderr


def test_the_final_line_says_when_steps_were_skipped():
    from ddp_scratch.run.progress import final_line
    s = {"status": "completed", "steps": 5, "total_steps": 5, "train_loss": 3.1, "skipped_steps": 4}
    assert "4 steps SKIPPED (non-finite)" in final_line(s, "out")
    assert "SKIPPED" not in final_line(dict(s, skipped_steps=0), "out")


@pytest.mark.parametrize("sets, size, said", [
    ({}, 2, "MPI_Allreduce"),
    ({"algorithm": "ring"}, 3, "ring all-reduce (hand-written)"),
    ({"algorithm": "ring", "compress": "bf16", "error_feedback": True}, 2,
     "ring all-reduce (hand-written), bf16 on the wire with error feedback"),
    ({"overlap": True}, 2, "MPI_Allreduce, overlapped with backward in 25 MiB buckets"),
    ({"algorithm": "ring", "compress": "fp16"}, 1, "so the comm settings have no effect"),
    ({}, 1, "none (1 rank: no gradient is exchanged)"),
])
def test_the_start_up_text_says_how_gradients_are_summed(sets, size, said):
    from ddp_scratch.config import CommConfig
    from ddp_scratch.run.progress import comm_text
    assert said in comm_text(CommConfig(**sets), size)


@pytest.mark.device_agnostic("the note on resume (the ring and bf16 on a device: tests/mpi)")
def test_a_resume_that_changes_how_gradients_travel_says_so(tmp_path):
    """comm.* and optim.zero are not in the checkpoint's identity (a resume may move to another
    world), but leaving them out on resume is said, with the --set that keeps them."""
    out = tmp_path / "c"
    r = run_launch("train", *ARGS, "--out", out, "--stop-at-step", 3, "--quiet", "--set", "comm.algorithm=ring",
                   "--set", "comm.compress=bf16")
    assert r.returncode == 0, r.stderr
    r = run_launch("train", *ARGS, "--out", out, "--resume", "--quiet", "--set", "comm.algorithm=ring")
    assert r.returncode == 0, r.stderr
    assert ("note: the checkpoint was made with comm.compress=bf16; this run goes on with comm.compress=none "
            "(to keep them, resume with --set comm.compress=bf16)") in r.stdout, r.stdout


@pytest.mark.device_agnostic("the note on resume")
def test_a_resume_that_changes_the_kernels_says_so(tmp_path):
    """kernels (numba or NumPy: the same values to rounding) is not in the checkpoint's identity,
    but a resume that switches it says so, as the summary names only the last setting."""
    out = tmp_path / "k"
    r = run_launch("train", *ARGS, "--out", out, "--stop-at-step", 3, "--quiet", "--set", "kernels=numpy")
    assert r.returncode == 0, r.stderr
    r = run_launch("train", *ARGS, "--out", out, "--resume", "--quiet")
    assert r.returncode == 0, r.stderr
    assert ("note: the checkpoint was made with kernels=numpy; this run goes on with kernels=auto "
            "(to keep them, resume with --set kernels=numpy)") in r.stdout, r.stdout
