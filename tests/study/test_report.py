import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ddp_scratch.fsutil import atomic_write_bytes, atomic_write_text
from ddp_scratch.study.report import aggregate, load_runs, make_plots, write_csv, write_report

REPO = Path(__file__).resolve().parents[2]
PNG_SIG = b"\x89PNG\r\n\x1a\n"


def stat(m):
    return {"min": 0.9 * m, "median": m, "max": 1.1 * m}


def run(mode, n, rep, t, config=None, per_rank=32, source="estimated-horowitz45nm"):
    gb = per_rank * n if mode == "weak" else 128
    return {"mode": mode, "config": config or f"{mode}-mlp", "model": "mlp",
            "world_size": n, "repeat": rep, "global_batch": gb,
            "per_rank_batch": gb // n, "steps": 20, "samples_per_s": gb / t,
            "tokens_per_s": None, "step_time_s": stat(t), "compute_s": stat(0.6 * t),
            "comm_s": stat(0.3 * t), "wait_s": stat(0.1 * t),
            "flops_per_s": 1e9 * n, "mfu": None, "peak_mem_bytes": stat(1e6 * n),
            "energy": {"source": source, "joules_per_step": 2.0 * t,
                       "joules_per_epoch": None, "ops_per_joule": 1e9 / (2.0 * t),
                       "mean_watts": 2.0}}


# strong: world 1 present; weak: no world 1, so world 2 is the baseline
STRONG = {1: [1.0, 1.2], 2: [0.6, 0.55], 4: [0.4, 0.3]}
WEAK = {2: [0.5], 4: [0.55], 8: [0.625]}


def all_runs():
    rs = [run("strong", n, i, t) for n, ts in STRONG.items() for i, t in enumerate(ts)]
    rs += [run("weak", n, i, t, source="measured-rapl") for n, ts in WEAK.items()
           for i, t in enumerate(ts)]
    return rs


def write_runs(d, runs):
    (d / "runs").mkdir(parents=True)
    for r in runs:
        name = f"{r['mode']}_n{r['world_size']}_r{r['repeat']}.json"
        (d / "runs" / name).write_text(json.dumps(r))


def by_key(rows):
    return {(r["mode"], r["world_size"]): r for r in rows}


def ms(*v):
    m = sum(v) / len(v)
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0


def test_aggregate_hand_computed():
    rows = by_key(aggregate(all_runs()))
    assert len(rows) == 6
    t1 = 2 / (1 / 1.0 + 1 / 1.2)  # harmonic mean of the world-1 repeats
    want = {
        # strong: efficiency = T1 / (N * TN) per repeat, then mean/std
        ("strong", 1, "efficiency"): ms(t1 / 1.0, t1 / 1.2),    # mean exactly 1
        ("strong", 2, "efficiency"): ms(t1 / (2 * 0.6), t1 / (2 * 0.55)),
        ("strong", 4, "efficiency"): ms(t1 / (4 * 0.4), t1 / (4 * 0.3)),
        ("strong", 4, "speedup"): ms(t1 / 0.4, t1 / 0.3),
        ("strong", 2, "step_time_s"): ms(0.6, 0.55),
        ("strong", 2, "samples_per_s"): ms(128 / 0.6, 128 / 0.55),
        # weak, baseline world 2, T_b = 0.5; efficiency = T_b / T_N
        ("weak", 2, "efficiency"): (1.0, 0.0),
        ("weak", 4, "efficiency"): (0.5 / 0.55, 0.0),
        ("weak", 8, "efficiency"): (0.8, 0.0),
        ("weak", 8, "speedup"): (8 * 0.5 / (2 * 0.625), 0.0),   # = 3.2
    }
    # spot-check the formulas against numbers worked out by hand
    assert want[("strong", 1, "efficiency")][0] == pytest.approx(1.0)
    assert want[("strong", 4, "efficiency")][0] == pytest.approx(0.7954545, abs=1e-7)
    assert want[("strong", 2, "efficiency")][1] == pytest.approx(0.0584386, abs=1e-7)
    errs = []
    for (mode, n, key), (m, s) in want.items():
        r = rows[(mode, n)]
        errs += [abs(r[key + "_mean"] - m), abs(r[key + "_std"] - s)]
    errs += [abs(rows[("strong", 2)]["compute_s"] - 0.6 * 0.575),
             abs(rows[("strong", 2)]["comm_s"] - 0.3 * 0.575),
             abs(rows[("strong", 2)]["wait_s"] - 0.1 * 0.575),
             abs(rows[("strong", 4)]["joules_per_step_mean"] - 0.7)]
    print(f"max aggregation error: {max(errs):.3g}")
    assert max(errs) < 1e-12
    assert {r["baseline_world"] for r in rows.values() if r["mode"] == "strong"} == {1}
    assert {r["baseline_world"] for r in rows.values() if r["mode"] == "weak"} == {2}
    assert rows[("strong", 1)]["repeats"] == 2 and rows[("weak", 8)]["repeats"] == 1
    assert rows[("weak", 8)]["tokens_per_s_mean"] is None
    assert rows[("weak", 8)]["peak_mem_bytes_max"] == pytest.approx(8.8e6)
    assert rows[("weak", 8)]["energy_source"] == "measured-rapl"


def test_csv_content(tmp_path):
    rows = aggregate(all_runs())
    path = write_csv(rows, tmp_path / "scaling.csv")
    with open(path, newline="") as f:
        got = list(csv.DictReader(f))
    assert len(got) == len(rows)
    for want_col in ("mode", "config", "world_size", "baseline_world",
                     "efficiency_mean", "efficiency_std", "samples_per_s_mean",
                     "compute_s", "comm_s", "wait_s", "ops_per_joule_mean",
                     "energy_source"):
        assert want_col in got[0]
    errs = [abs(float(g["efficiency_mean"]) - r["efficiency_mean"]) for g, r in zip(got, rows)]
    print(f"max csv round-trip error: {max(errs):.3g}")
    assert max(errs) < 1e-12
    assert got[0]["tokens_per_s_mean"] == ""
    assert [g["world_size"] for g in got] == ["1", "2", "4", "2", "4", "8"]


def test_plots_are_pngs(tmp_path):
    paths = make_plots(aggregate(all_runs()), tmp_path / "plots")
    assert len(paths) == 4
    for p in paths:
        data = Path(p).read_bytes()
        assert data[:8] == PNG_SIG and len(data) > 1024, p
    assert not [f for f in os.listdir(tmp_path / "plots") if f.endswith(".tmp")]


def test_write_report(tmp_path):
    write_runs(tmp_path, all_runs())
    rp = Path(write_report(tmp_path))
    assert rp == tmp_path / "report.md"
    md = rp.read_text()
    for name in ("throughput", "efficiency", "time_breakdown", "flops_energy"):
        assert f"](plots/{name}.png)" in md
        assert (tmp_path / "plots" / f"{name}.png").stat().st_size > 1024
    assert "`measured-rapl`" in md and "`estimated-horowitz45nm`" in md
    assert "estimates, not measurements" in md
    assert "baseline_world" in md
    assert md.count("\n| strong |") == 3 and md.count("\n| weak |") == 3
    assert (tmp_path / "scaling.csv").read_text().startswith("mode,config,")


def test_load_runs_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="no run files"):
        load_runs(tmp_path)
    write_runs(tmp_path, all_runs()[:2])
    assert len(load_runs(tmp_path)) == 2
    bad = tmp_path / "runs" / "broken.json"
    bad.write_text('{"mode": "strong", ')
    with pytest.raises(ValueError, match=r"broken\.json: invalid JSON"):
        load_runs(tmp_path)
    r = all_runs()[0]
    del r["comm_s"]
    bad.write_text(json.dumps(r))
    with pytest.raises(ValueError, match=r"broken\.json: missing keys \['comm_s'\]"):
        load_runs(tmp_path)
    for mutate, msg in [(lambda r: r.update(mode="diagonal"), "mode"),
                        (lambda r: r.update(world_size=0), "world_size"),
                        (lambda r: r["step_time_s"].pop("median"), "step_time_s"),
                        (lambda r: r["energy"].pop("source"), "energy"),
                        (lambda r: r.update(samples_per_s="fast"), "samples_per_s")]:
        r = all_runs()[0]
        mutate(r)
        bad.write_text(json.dumps(r))
        with pytest.raises(ValueError, match=rf"broken\.json: .*{msg}"):
            load_runs(tmp_path)


def test_atomic_writes(tmp_path):
    p = tmp_path / "sub" / "x.json"
    atomic_write_text(p, "one")
    atomic_write_bytes(p, b"two")
    assert p.read_bytes() == b"two"
    assert os.listdir(tmp_path / "sub") == ["x.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_atomic_write_failure_leaves_old_file(tmp_path):
    p = tmp_path / "x.json"
    atomic_write_text(p, "old")
    with pytest.raises(TypeError):
        atomic_write_bytes(p, "not bytes")  # fails mid-write
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["x.json"]


def test_heavy_imports_are_lazy():
    code = ("import sys, ddp_scratch.study.report, ddp_scratch.study.energy, ddp_scratch.study.comm_model;"
            "bad = [m for m in ('matplotlib', 'torch', 'jax') if m in sys.modules];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
