"""The communication dimensions of a scaling report: what run_json takes from a run's summary
(comm settings, bytes on the wire, optimizer state under either name), how --compare is parsed,
and what report.md and the CSV show per setting; run files without them report as before."""
import csv
import json
from pathlib import Path

import pytest

from ddp_scratch.cli.sweep import parse_compare, run_json, setting_slug
from ddp_scratch.errors import UserError
from ddp_scratch.study import plots
from ddp_scratch.study.report import validate_run, write_report
from test_report import run, stat


@pytest.fixture(autouse=True)
def low_dpi(monkeypatch):
    monkeypatch.setattr(plots, "DPI", 40)       # the figures' content, not their resolution, is tested here


def write_runs(d, runs):
    (d / "runs").mkdir(parents=True)
    for i, r in enumerate(runs):
        (d / "runs" / f"{i}.json").write_text(json.dumps(r))


def summary(**extra):
    t = stat(0.01)
    return {"timing": {"step_time_s": t, "compute_s": t, "comm_s": stat(0.002), "wait_s": stat(0.0),
                       "steps_timed": 5},
            "model": "mlp", "flops_per_s": 1e9, "peak_mem_bytes": stat(1e6), "device": "x86_64",
            "config": {"comm": {"algorithm": "ring", "compress": "bf16", "error_feedback": True, "backend": "mpi"},
                       "optim": {"name": "adamw", "zero": 1}},
            "comm_bytes_per_step": 1234.0, "comm_bytes_per_step_source": "counted", **extra}


@pytest.mark.parametrize("key, value, want", [
    ("optim_state_bytes_per_rank", 4096, 4096),
    ("optimizer_state_bytes", 2048.0, 2048.0),
    ("optim_state_bytes_per_rank", {"min": 10, "median": 20, "max": 30}, 30),     # over ranks: the largest
    ("unrelated", 1, None),
])
def test_run_json_records_settings_bytes_and_optimizer_state(key, value, want):
    rj = run_json(summary(**{key: value}), "weak", "cfg", 2, 0, 64,
                  (("comm.compress", "bf16"), ("optim.zero", "1")))
    assert rj["setting"] == "comm.compress=bf16, optim.zero=1"
    assert rj["comm"] == {"algorithm": "ring", "compress": "bf16", "error_feedback": True, "zero": 1}
    assert (rj["comm_bytes_per_step"], rj["comm_bytes_per_step_source"]) == (1234.0, "counted")
    assert rj["optim_state_bytes_per_rank"] == want
    validate_run(json.loads(json.dumps(rj)), "rj.json")


def test_run_json_of_a_summary_without_them_says_unknown():
    s = summary()
    for k in ("config", "comm_bytes_per_step", "comm_bytes_per_step_source"):
        del s[k]
    rj = run_json(s, "weak", "cfg", 1, 0, 64)
    assert (rj["setting"], rj["comm"], rj["comm_bytes_per_step"], rj["optim_state_bytes_per_rank"]) == (None,) * 4
    validate_run(json.loads(json.dumps(rj)), "rj.json")


def test_parse_compare_keeps_list_values_whole_and_slugs_are_file_names():
    assert parse_compare(["model.hidden=[64,32],[128]", "comm.algorithm = mpi, ring"]) == [
        ("model.hidden", ["[64,32]", "[128]"]), ("comm.algorithm", ["mpi", "ring"])]
    assert setting_slug((("model.hidden", "[64,32]"), ("comm.algorithm", "ring"))) == \
        "model.hidden-64-32_comm.algorithm-ring"
    with pytest.raises(UserError, match="also given with --set"):
        parse_compare(["comm.algorithm=mpi,ring"], ["comm.algorithm=ring"])


@pytest.mark.parametrize("field, value, says", [
    ("comm", "ring", "comm must be an object"),
    ("comm", {"algorithm": 3}, "comm.algorithm must be a one-line string"),
    ("comm", {"zero": 7}, "comm.zero must be an integer from 0 to 3"),
    ("comm", {"error_feedback": "yes"}, "comm.error_feedback must be true, false or null"),
    ("comm_bytes_per_step", -1, "comm_bytes_per_step must be a number"),
    ("optim_state_bytes_per_rank", "big", "optim_state_bytes_per_rank must be a number"),
    ("setting", "", "setting must be a one-line string"),
    ("setting_order", -1, "setting_order must be an integer from 0"),
])
def test_a_wrong_communication_field_is_one_error_naming_it(field, value, says):
    r = run("weak", 2, 0, 0.1)
    r[field] = value
    with pytest.raises(ValueError, match=says):
        validate_run(r, "x.json")


def compared(zero_bytes=None):
    """mpi and ring at 1 and 2 ranks, as a --compare comm.algorithm=mpi,ring sweep writes them."""
    rs = []
    for algo, t in (("mpi", 0.1), ("ring", 0.12)):
        for n in (1, 2):
            r = run("weak", n, 0, t * (1 + 0.2 * (n - 1)))
            r.update(setting=f"comm.algorithm={algo}", comm={"algorithm": algo, "compress": "none",
                                                             "error_feedback": False, "zero": 0},
                     comm_bytes_per_step=0.0 if n == 1 else 2.5e6,
                     comm_bytes_per_step_source="none" if n == 1 else ("counted" if algo == "ring" else "model"),
                     optim_state_bytes_per_rank=zero_bytes)
            rs.append(r)
    return rs


def test_report_compares_settings_with_a_communication_table_and_plot(tmp_path):
    write_runs(tmp_path, compared(zero_bytes=8e6))
    md = Path(write_report(tmp_path)).read_text()
    for algo in ("mpi", "ring"):
        assert f"### MLP, weak scaling, comm.algorithm={algo}" in md
        assert f"Config `weak-mlp`, weak scaling, setting `comm.algorithm={algo}`:" in md
    assert "| sent MB/step | optim. state MB/rank |" in md
    assert "| series | N | algorithm | compression | error feedback | ZeRO | sent per rank and step |" in md
    assert "| MLP, weak scaling, comm.algorithm=ring | 2 | ring | none | no | 0 | 2.500 MB | counted | 43.20 | 8.000 MB |" in md
    assert "| MLP, weak scaling, comm.algorithm=mpi | 1 | mpi | none | no | 0 | 0 B | none |" in md
    assert "![communication time against bytes on the wire](plots/comm_vs_bytes.png)" in md
    rows = list(csv.DictReader(open(tmp_path / "scaling.csv")))
    assert [(r["setting"], r["world_size"], r["optim_zero"], r["comm_bytes_per_step_mean"]) for r in rows] == [
        ("comm.algorithm=mpi", "1", "0", "0.0"), ("comm.algorithm=mpi", "2", "0", "2500000.0"),
        ("comm.algorithm=ring", "1", "0", "0.0"), ("comm.algorithm=ring", "2", "0", "2500000.0")]
    assert (tmp_path / "plots" / "comm_vs_bytes.png").is_file() and (tmp_path / "plots" / "comm_vs_bytes.pdf").is_file()


def test_settings_are_listed_in_the_order_of_the_command():
    from ddp_scratch.study.report import aggregate
    rs = compared()
    assert [r["setting"] for r in aggregate(rs)][::2] == ["comm.algorithm=mpi", "comm.algorithm=ring"]
    for r in rs:
        r["setting_order"] = 0 if r["comm"]["algorithm"] == "ring" else 1     # --compare comm.algorithm=ring,mpi
    assert [r["setting"] for r in aggregate(rs)][::2] == ["comm.algorithm=ring", "comm.algorithm=mpi"]


def test_without_optimizer_state_its_column_is_left_out_and_the_table_says_so(tmp_path):
    write_runs(tmp_path, compared())
    md = Path(write_report(tmp_path)).read_text()
    assert "optim. state MB/rank" not in md and "| 2 | mpi | none | no | 0 | 2.500 MB | model | 36.00 | — |" in md


def test_old_run_files_make_the_report_they_always_made(tmp_path):
    write_runs(tmp_path, [run("weak", n, 0, 0.1) for n in (1, 2)])
    md = Path(write_report(tmp_path)).read_text()
    assert "## Communication" not in md and "sent MB/step" not in md and "comm_vs_bytes" not in md
    assert "setting" not in open(tmp_path / "scaling.csv").readline()
    assert not (tmp_path / "plots" / "comm_vs_bytes.png").exists()
