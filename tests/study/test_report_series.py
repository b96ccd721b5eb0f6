"""What report.md compares and how it says it: each series' table names its model, dtype and both
batches; an efficiency above 100 % and different thread counts per rank are remarked on; numbers
have one format per column, and a ± only where the repeats really differ; GPUs are "none" where
that is known."""
import shutil
from pathlib import Path

import pytest

from ddp_scratch.study.report import aggregate, fmt, write_report
from test_report import run, stat, write_runs

REPO = Path(__file__).resolve().parents[2]


def env(threads=1, gpus=None):
    return {"threads_per_rank": threads, "gpus": gpus, "hosts": ["n1"]}


def report_of(tmp_path, runs):
    write_runs(tmp_path, runs)
    return Path(write_report(tmp_path)).read_text()


# ----------------------------------------------------------------- what the tables say

def test_each_series_table_names_model_dtype_and_both_batches(tmp_path):
    rs = [run("weak", n, 0, 0.1) for n in (1, 2)] + [run("strong", n, 0, 0.2 / n) for n in (1, 4)]
    for r in rs:
        r.update(dtype="float32", n_params=1_234_567)
    md = report_of(tmp_path, rs)
    assert ("Config `weak-mlp`, weak scaling: model `mlp` (1,234,567 parameters), float32; per-rank batch 32 "
            "at every N (the global batch grows with N).") in md
    assert "Config `strong-mlp`, strong scaling: model `mlp` (1,234,567 parameters), float32; global batch 128" in md
    head = "| N | base | reps | global batch | per-rank batch | samples/s | step ms |"
    assert md.count(head) == 2
    assert "\n| 1 | 1 | 1 | 32 | 32 | 320.0 | 100.0 |" in md and "\n| 2 | 1 | 1 | 64 | 32 | 640.0 | 100.0 |" in md
    assert "\n| 4 | 1 | 1 | 128 | 32 | 2,560 | 50.00 |" in md


def test_a_gpt_series_shows_tokens_per_second(tmp_path):
    gpt = [run("strong", n, 0, 0.5 / n, config="gpt") for n in (1, 2)]
    for r in gpt:
        r.update(model="gpt", tokens_per_s=r["samples_per_s"] * 64)
    md = report_of(tmp_path, gpt + [run("weak", n, 0, 0.1) for n in (1, 2)])
    gpt_part, mlp_part = md.split("### GPT, strong scaling")[1].split("### MLP, weak scaling")
    assert "| samples/s | tokens/s | step ms |" in gpt_part and "\n| 2 | 1 | 1 | 128 | 64 | 512.0 | 32,770 |" in gpt_part
    assert "tokens/s" not in mlp_part


def test_phases_have_a_std_over_repeats():
    rs = [run("strong", 1, i, t) for i, t in enumerate((1.0, 1.2))]
    rs[1]["wait_s"] = stat(0.5)          # other = step - compute - comm - wait: 0 in repeat 0, 0 here too
    row = aggregate(rs)[0]
    assert row["compute_s"] == pytest.approx(0.66) and row["compute_s_std"] == pytest.approx(0.6 * 0.2 / 2 ** 0.5)
    assert row["comm_s_std"] == pytest.approx(0.3 * 0.2 / 2 ** 0.5)
    assert row["wait_s"] == pytest.approx(0.3) and row["wait_s_std"] == pytest.approx(0.4 / 2 ** 0.5)
    assert row["other_s"] == 0 and row["other_s_std"] == 0
    rs[1]["wait_s"] = stat(0.0)          # now repeat 1 leaves 0.12 s of 'other'
    row = aggregate(rs)[0]
    assert row["other_s"] == pytest.approx(0.06) and row["other_s_std"] == pytest.approx(0.12 / 2 ** 0.5)


def test_phase_columns_show_their_std_in_the_report(tmp_path):
    md = report_of(tmp_path, [run("strong", 1, i, t) for i, t in enumerate((1.0, 1.2))])
    # compute 660 ± 84.85, comm 330 ± 42.43, wait 110 ± 14.14 ms over the two repeats
    assert "| 660.0 ± 84.9 | 330.0 ± 42.4 | 110.0 ± 14.1 | 0 |" in md


@pytest.mark.parametrize("args, want", [
    ((13_500.2, 429.8), "13,500 ± 430"),
    ((1.915e11, 3.738e-05, 1e-9), "191.5"),              # GFLOP/J: a std of 2e-16 of the mean is noise
    ((0.006394, 1.062e-18), "0.006394"),
    ((7.2859, 0.3021), "7.286 ± 0.302"),
    ((0.99995, 0.04089), "1.000 ± 0.041"),              # rounding up does not add a digit
    ((1.0, 0.0), "1.000"), ((0.0, None), "0"), ((None, None), "—"), ((float("nan"), 1.0), "—"),
    ((2_000_000.0, 1.0), "2,000,000 ± 1.0"),
    ((0.5, 0.25, 100.0), "50.00 ± 25.00"),
    ((1e30, None), "1.000e+30"),                          # no real column; still one line, still finite
])
def test_number_format(args, want):
    assert fmt(*args) == want


# ----------------------------------------------------------------- what the report remarks on

def test_efficiency_above_100_percent_is_explained_under_the_table(tmp_path):
    rs = [run("weak", 1, 0, 0.12), run("weak", 2, 0, 0.1)]          # 120 %: the baseline is slow
    md = report_of(tmp_path, rs)
    note = md.split("Efficiency above 100 % (N = 2: 120.0 %)")[1].split("\n")[0]
    assert "not real superlinear scaling unless you can explain it" in note
    assert "BLAS threads per rank" in note and "cache" in note
    assert md.index("| 2 | 1 | 1 |") < md.index("Efficiency above 100 %") < md.index("## Plots")
    md = report_of(tmp_path / "ok", [run("weak", 1, 0, 0.1), run("weak", 2, 0, 0.0960)])   # 104 %: noise
    assert "Efficiency above 100 %" not in md


def test_different_thread_counts_per_rank_are_a_bold_warning(tmp_path):
    rs = [run("strong", n, 0, 0.1 / n) for n in (1, 2)]
    rs[0]["environment"], rs[1]["environment"] = env(threads=2), env(threads=1)
    md = report_of(tmp_path, rs)
    assert "| Threads per rank | 2; 1 |" in md
    assert ("**The points of this series used different thread counts per rank (N = 1: 2, N = 2: 1), so they "
            "are not comparable:") in md
    assert "| N | base | reps | global batch | per-rank batch | threads/rank |" in md and "\n| 1 | 1 | 1 | 128 | 128 | 2 |" in md
    rs[0]["environment"] = env(threads=1)
    assert "different thread counts" not in report_of(tmp_path / "same", rs)


@pytest.mark.parametrize("backend, gpus, want", [
    ("numpy", None, "| GPUs | none used (NumPy backend: the runs ran on the CPU) |"),
    ("cupy", [], "| GPUs | none (NVML found no GPU) |"),
    ("cupy", None, "| GPUs | not recorded |"),
    ("numpy", [{"name": "NVIDIA A100"}], "| GPUs | 1 × NVIDIA A100; not used: every run used the NumPy backend"),
])
def test_gpus_none_is_said_as_none_and_unknown_as_not_recorded(tmp_path, backend, gpus, want):
    rs = [run("weak", n, 0, 0.1) for n in (1, 2)]
    for r in rs:
        r.update(backend=backend, environment=env(gpus=gpus))
    assert want in report_of(tmp_path, rs)


def test_the_committed_cpu_reports_are_built_by_this_code(tmp_path):
    """benchmarks/results/scaling-cpu-*: report.md regenerated from its run files is the same (the
    comm sweep compares ring, bf16 and ZeRO-1 with MPI_Allreduce)."""
    for name in ("scaling-cpu-mlp-strong", "scaling-cpu-mlp-weak", "scaling-cpu-comm-weak"):
        src = REPO / "benchmarks" / "results" / name
        shutil.copytree(src / "runs", tmp_path / name / "runs")
        assert Path(write_report(tmp_path / name)).read_text() == (src / "report.md").read_text(), name
        assert (tmp_path / name / "scaling.csv").read_text() == (src / "scaling.csv").read_text(), name
