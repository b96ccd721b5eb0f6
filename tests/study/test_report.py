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


def run(mode, n, rep, t, config=None, per_rank=32, source="estimated-horowitz45nm", flops_per_sample=1e7):
    """One run file as the sweep writes it (FLOP/s = samples/s x the model's FLOPs per sample)."""
    gb = per_rank * n if mode == "weak" else 128
    return {"mode": mode, "config": config or f"{mode}-mlp", "model": "mlp",
            "world_size": n, "repeat": rep, "global_batch": gb,
            "per_rank_batch": gb // n, "steps": 20, "samples_per_s": gb / t,
            "tokens_per_s": None, "step_time_s": stat(t), "compute_s": stat(0.6 * t),
            "comm_s": stat(0.3 * t), "wait_s": stat(0.1 * t),
            "flops_per_s": gb / t * flops_per_sample, "mfu": None, "peak_mem_bytes": stat(1e6 * n),
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


def oversubscribed_runs():
    """Weak scaling at 1, 2 and 4 ranks of 1 thread on a 2-core host, as the run files record it."""
    rs = [run("weak", n, 0, 0.01 * n) for n in (1, 2, 4)]
    for r in rs:
        r["environment"] = {"hosts": ["vm"], "ranks": r["world_size"], "logical_cores": 2, "cores_available": 2,
                            "threads_per_rank": 1}
    return rs


def test_oversubscribed_points_are_flagged_from_the_run_files_alone(tmp_path):
    """4 ranks x 1 thread on 2 cores measured the sharing, not scaling: report.md says so at the top,
    on the point's row and under its table, the CSV has a column; 2 ranks on 2 cores are not marked.
    Two hosts of 2 cores hold 4 ranks; a rank bound to 1 of 8 cores is judged on its own core."""
    write_runs(tmp_path, oversubscribed_runs())
    md = Path(write_report(tmp_path)).read_text()
    assert "**Oversubscribed points (N = 4)" in md
    assert "| 4 (oversubscribed) |" in md and "| 2 |" in md and "| 2 (oversub" not in md
    assert "N = 4 ran 4 ranks x 1 thread(s) = 4 on 2 cores" in md and "not scaling" in md
    rows = list(csv.DictReader(open(tmp_path / "scaling.csv")))
    assert [r["oversubscribed"] for r in rows] == ["", "", "yes"]
    from ddp_scratch.study.where import oversubscription
    env = {"hosts": ["a", "b"], "logical_cores": 2, "cores_available": 2, "threads_per_rank": 1}
    assert oversubscription({"world_size": 4, "environment": env}) is None
    assert oversubscription({"world_size": 4, "environment": dict(env, threads_per_rank=2)}) == (2, 2, 2, True)
    bound = {"hosts": ["a"], "logical_cores": 8, "cores_available": 1, "threads_per_rank": 1}
    assert oversubscription({"world_size": 4, "environment": bound}) == (4, 1, 1, False)    # bound or shared?
    assert oversubscription({"world_size": 4, "environment": dict(bound, threads_per_rank=2)})[3] is True
    assert oversubscription({"world_size": 4, "environment": None}) is None


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


def png_dpi(data):
    """Dots per inch from a PNG's pHYs chunk (pixels per metre), None without one."""
    import struct
    pos = 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"pHYs":
            ppm_x, ppm_y, unit = struct.unpack(">IIB", data[pos + 8:pos + 17])
            return round(ppm_x * 0.0254) if unit == 1 else None
        pos += 12 + length
    return None


def test_plots_are_300dpi_pngs_with_pdf_copies(tmp_path):
    paths = make_plots(aggregate(all_runs()), tmp_path / "plots")
    names = sorted(Path(p).name for p in paths)
    stems = ["efficiency", "energy", "flops", "throughput", "time_breakdown"]
    assert names == sorted(f"{s}.{e}" for s in stems for e in ("png", "pdf"))
    for p in map(Path, paths):
        data = p.read_bytes()
        if p.suffix == ".png":
            assert data[:8] == PNG_SIG and png_dpi(data) == 300, p
        else:
            assert data[:5] == b"%PDF-" and b"/Font" in data and len(data) > 5000, p
    assert not [f for f in os.listdir(tmp_path / "plots") if f.endswith(".tmp")]


def test_write_report(tmp_path):
    write_runs(tmp_path, all_runs())
    rp = Path(write_report(tmp_path))
    assert rp == tmp_path / "report.md"
    md = rp.read_text()
    for name in ("throughput", "efficiency", "time_breakdown", "flops", "energy"):
        assert f"](plots/{name}.png)" in md
        assert (tmp_path / "plots" / f"{name}.png").stat().st_size > 1024
        assert (tmp_path / "plots" / f"{name}.pdf").stat().st_size > 1024
    assert "`measured-rapl`" in md and "`estimated-horowitz45nm`" in md
    assert "estimates, not measurements" in md
    # only the weak series measured its energy: the plot says what it leaves out
    assert "Left out, because their energy is not measured: MLP, strong scaling at N = 1, 2, 4" in md
    assert "baseline_world" in md
    strong, weak = md.split("### MLP, strong scaling")[1].split("### MLP, weak scaling")   # a table each
    assert strong.count("\n| ") == 1 + 3 and weak.split("## Plots")[0].count("\n| ") == 1 + 3   # head, 3 rows
    assert "other ms" in md and "optimizer update" in md
    assert (tmp_path / "scaling.csv").read_text().startswith("mode,config,")
    # runs without an environment record (older run files) still report, and say so
    assert "Not recorded: these run files predate the environment record" in md


def test_other_phase_fills_the_step_and_is_never_negative():
    a = run("strong", 1, 0, 1.0)                       # 0.6 + 0.3 + 0.1 = the whole step
    b = run("strong", 2, 0, 0.5)
    b["compute_s"], b["comm_s"], b["wait_s"] = stat(0.2), stat(0.1), stat(0.05)
    c = run("strong", 4, 0, 0.25)
    c["compute_s"] = stat(0.3)                          # medians over ranks need not add up
    rows = by_key(aggregate([a, b, c]))
    assert rows[("strong", 1)]["other_s"] == pytest.approx(0.0, abs=1e-12)
    assert rows[("strong", 2)]["other_s"] == pytest.approx(0.15)
    assert rows[("strong", 4)]["other_s"] == 0.0


def test_estimated_energy_gets_no_plot_and_a_stale_one_is_removed(tmp_path):
    write_runs(tmp_path, [run("weak", n, 0, 0.1 * n) for n in (1, 2)])   # Horowitz estimates only
    (tmp_path / "plots").mkdir()
    for stale in ("energy.png", "energy.pdf", "flops_energy.png"):
        (tmp_path / "plots" / stale).write_bytes(b"from an older report")
    (tmp_path / "plots" / "mine.png").write_bytes(b"not ours")
    md = Path(write_report(tmp_path)).read_text()
    assert "No energy plot: no run measured its energy. An estimate from FLOP" in md and "energy.png" not in md
    for name in os.listdir(tmp_path / "runs"):           # no energy recorded at all: no talk of estimates
        r = json.loads((tmp_path / "runs" / name).read_text())
        r["energy"] = dict.fromkeys(r["energy"]) | {"source": "none"}
        (tmp_path / "runs" / name).write_text(json.dumps(r))
    md = Path(write_report(tmp_path)).read_text()
    assert "No energy plot: no run measured its energy. Measured energy needs" in md
    assert "`none`: no energy recorded" in md and "estimate" not in md.lower()
    assert sorted(os.listdir(tmp_path / "plots")) == sorted(
        [f"{s}.{e}" for s in ("efficiency", "flops", "throughput", "time_breakdown") for e in ("png", "pdf")]
        + ["mine.png"])


def test_environment_in_report_and_subtitle(tmp_path):
    from ddp_scratch.study.environment import describe
    from ddp_scratch.study.report import hardware_line
    env = describe(threads=2, hosts=["n1", "n2"], mpi_library="MPICH Version: 4.2.0", ranks=2)
    env.update(cpu_model="AMD EPYC 7763 64-Core Processor", date_utc="2026-05-09T07:35:25Z",
               git_commit="0123456789abcdef0123", git_dirty=True, blas="openblas 0.3.27",
               gpus=[{"name": "NVIDIA A100-SXM4-40GB", "memory_bytes": 42949672960}], gpu_driver="550.1")
    runs = all_runs()[:3]
    for r in runs:
        r["environment"] = env
    line = hardware_line(runs)
    assert line == "1 × NVIDIA A100-SXM4-40GB · AMD EPYC 7763 64-Core Processor · 2 hosts · 2 threads/rank · 2026-05-09"
    old = all_runs()[:1]
    assert hardware_line(old) == "hardware not recorded · date not recorded"
    old[0].update(device="x86_64", backend="numpy")
    assert hardware_line(old) == "x86_64 (numpy) · date not recorded"
    write_runs(tmp_path, runs + all_runs()[3:4])
    md = Path(write_report(tmp_path)).read_text()
    top = md[:md.index("## Definitions")]
    for want in ("| Hosts | n1, n2 (2 hosts) |", "| CPU | AMD EPYC 7763 64-Core Processor |",
                 "| Threads per rank | 2 |", "| MPI | MPICH Version: 4.2.0 |",
                 "| NumPy / BLAS | ", "openblas 0.3.27", "| Python | ", "| Date (UTC) | 2026-05-09 07:35 |",
                 "| Commit | 0123456789ab (with uncommitted changes) |",
                 "| GPUs | 1 × NVIDIA A100-SXM4-40GB (driver 550.1) |",
                 "1 of 4 run files have no environment record."):
        assert want in top, want


def test_run_json_of_the_sweep_carries_the_environment():
    from ddp_scratch.cli.sweep import run_json
    from ddp_scratch.study.environment import describe
    from ddp_scratch.study.report import validate_run
    t = stat(0.01)
    summary = {"timing": {"step_time_s": t, "compute_s": t, "comm_s": stat(0.0), "wait_s": stat(0.0),
                          "steps_timed": 5},
               "model": "mlp", "flops_per_s": 1e9, "peak_mem_bytes": stat(1e6), "device": "x86_64",
               "environment": describe(ranks=1)}
    rj = run_json(summary, "weak", "cfg", 1, 0, 64)
    assert rj["environment"] == summary["environment"]
    validate_run(json.loads(json.dumps(rj)), "rj.json")          # the report reads what the sweep writes
    del summary["environment"]
    assert run_json(summary, "weak", "cfg", 1, 0, 64)["environment"] is None


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
