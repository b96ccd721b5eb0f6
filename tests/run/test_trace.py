"""logging.trace: OUT/trace.json is Chrome trace JSON with one track per rank, whose phases nest
inside their steps and whose times only move forward on each rank; its memory is capped."""
import json

import numpy as np
import pytest

from conftest import ON_DEVICE
from ddp_scratch.run.trace import PHASES, Tracer

DIGITS = "experiments/mlp_digits.yaml"
IN_STEP = {"batch", "forward", "backward", "gradient all-reduce", "reduce-scatter + statistics", "optimizer",
           "parameter all-gather"}


def load(path):
    doc = json.loads(path.read_text())
    assert set(doc) >= {"traceEvents", "otherData"}
    for e in doc["traceEvents"]:
        assert {"ph", "pid", "tid", "name"} <= set(e), e
        if e["ph"] == "X":
            assert isinstance(e["ts"], (int, float)) and e["dur"] >= 0, e
        else:
            assert e["ph"] == "M", e
    return doc


def within(inner, outer, slack=0.01):      # microseconds, rounded to ns in the file
    return outer["ts"] - slack <= inner["ts"] and inner["ts"] + inner["dur"] <= outer["ts"] + outer["dur"] + slack


@pytest.mark.parametrize("how", [["comm.overlap=true", "comm.bucket_mb=0.02", "comm.first_bucket_mb=0.01"],
                                 ["optim.zero=1"]], ids=["overlap", "zero"])
def test_two_rank_trace_has_one_track_per_rank_and_nested_phases(tmp_path, launch, how):
    sets = [a for s in ["train.max_steps=12", "train.eval_every=5", "train.checkpoint_every=6", "logging.trace=true", *how]
            for a in ("--set", s)]
    r = launch("train", DIGITS, "--out", tmp_path, "--quiet", *sets, ranks=2)
    assert r.returncode == 0, r.stderr
    doc = load(tmp_path / "trace.json")
    ev = doc["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in ev if e["ph"] == "M" and e["name"] == "process_name"}
    assert names == {0: "rank 0", 1: "rank 1"}
    assert doc["otherData"]["dropped_events"] == 0 and len(doc["otherData"]["clock_offset_us"]) == 2
    for pid in (0, 1):
        main = [e for e in ev if e["ph"] == "X" and e["pid"] == pid and e["tid"] == 0]
        ts = [e["ts"] for e in main]
        assert ts == sorted(ts), f"rank {pid}: timestamps go back"
        steps = [e for e in main if e["name"] == "step"]
        assert [s["args"]["step"] for s in steps] == list(range(12))
        for a, b in zip(steps, steps[1:]):
            assert a["ts"] + a["dur"] <= b["ts"] + 0.01, "steps overlap"
        for e in main:
            home = [s for s in steps if within(e, s)]
            if e["name"] in IN_STEP or e["name"].startswith("grad "):
                assert len(home) == 1, f"rank {pid}: {e} lies in no step"
            elif e["name"] in ("evaluation", "checkpoint"):
                assert not any(s["ts"] < e["ts"] < s["ts"] + s["dur"] for s in steps), e
            else:
                assert e["name"] == "step", e
        for s in steps:
            inside = {e["name"] for e in main if e is not s and within(e, s)}
            want = {"batch", "forward", "backward", "optimizer"} | (
                {"reduce-scatter + statistics", "parameter all-gather"} if how == ["optim.zero=1"] else {"gradient all-reduce"})
            assert want <= inside, f"rank {pid} step {s['args']['step']}: {want - inside} missing"
            backward = next(e for e in main if e["name"] == "backward" and within(e, s))
            grads = [e for e in main if e["name"].startswith("grad ") and within(e, s)]
            assert {g["name"] for g in grads} == {f"grad fc{i}.{w}" for i in range(3) for w in "Wb"}
            assert all(within(g, backward) for g in grads)
        assert sum(e["name"] == "evaluation" for e in main) == 3          # steps 5, 10 and the end
        assert sum(e["name"] == "checkpoint" for e in main) == 3          # steps 6, 12 and the end
        buckets = [e for e in ev if e["ph"] == "X" and e["pid"] == pid and e["tid"] == 1]
        # every step after the first (which learns the write counts); a device buffer staged through
        # the host (an MPI that is not CUDA-aware) is not overlapped
        if "comm.overlap=true" in how and not ON_DEVICE:
            assert len({b["name"] for b in buckets}) >= 3
            assert all(any(within(b, s) for s in steps[1:]) for b in buckets)
        else:
            assert not buckets


def test_no_trace_when_off(tmp_path, launch):
    r = launch("train", DIGITS, "--out", tmp_path, "--quiet", "--set", "train.max_steps=2")
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "trace.json").exists()


def test_events_beyond_the_capacity_are_counted_not_kept(tmp_path, capsys):
    from ddp_scratch.parallel.world import Comm
    tr = Tracer(0, capacity=4)
    for i in range(10):
        tr.add(1, float(i), i + 0.5, step=i)
    assert tr.n == 4 and tr.dropped == 6 and tr.kind.nbytes == 16
    tr.write(Comm(serial=True), tmp_path / "trace.json")
    doc = load(tmp_path / "trace.json")
    assert doc["otherData"]["dropped_events"] == 6
    assert "dropped 6 (" in capsys.readouterr().err
    xs = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert [e["name"] for e in xs] == [PHASES[1]] * 4 and [e["ts"] for e in xs] == [0.0, 1e6, 2e6, 3e6]
    assert np.allclose([e["dur"] for e in xs], 5e5) and [e["args"]["step"] for e in xs] == [0, 1, 2, 3]


def test_a_trace_that_cannot_be_written_leaves_the_old_one(tmp_path):
    from ddp_scratch.errors import UserError
    from ddp_scratch.parallel.world import Comm
    old = tmp_path / "trace.json"
    old.write_text("old")
    tr = Tracer(0, capacity=4)
    tr.add(1, 0.0, 1.0)
    tr.names[1] = object()        # not JSON: the write fails halfway
    with pytest.raises(TypeError):
        tr.write(Comm(serial=True), old)
    assert old.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["trace.json"]
    (tmp_path / "blocker").write_text("")      # a file where the folder should be: one line naming it
    with pytest.raises(UserError, match=f"cannot write {tmp_path / 'blocker' / 'trace.json'}"):
        Tracer(0, capacity=4).write(Comm(serial=True), tmp_path / "blocker" / "trace.json")
