"""`launch.py report DIR` through the command line: a wrong run file or an unwritable output is one
`error:` line and exit status 2, and an earlier report.md survives a failed rebuild."""
import json
import os

import pytest

from test_report import all_runs, write_runs
from test_runfile import mutated, valid


def one_error_line(r):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: report: "), r.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize("content, field", [
    (mutated(["energy", "joules_per_step"], "x"), "energy.joules_per_step must be a number"),
    (mutated(["step_time_s", "median"], 0), "step_time_s.median must be a time in seconds"),
    (mutated(["world_size"], "4"), "world_size must be an integer from 1"),
    (b"\x00\xff garbage", "invalid JSON: not UTF-8"),
    (b"[]", "expected a JSON object"),
])
def test_wrong_run_file_is_one_line(tmp_path, launch, content, field):
    (tmp_path / "runs").mkdir()
    data = content if isinstance(content, bytes) else json.dumps(content).encode()
    (tmp_path / "runs" / "x.json").write_bytes(data)
    line = one_error_line(launch("report", tmp_path, timeout=60))
    assert f"x.json: {field}" in line, line


def test_a_copied_run_file_or_a_mixed_series_is_one_line(tmp_path, launch):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "a.json").write_text(json.dumps(valid(1)))
    (tmp_path / "runs" / "a copy.json").write_text(json.dumps(valid(1)))
    line = one_error_line(launch("report", tmp_path, timeout=60))
    assert "two run files for one point" in line and "a copy.json and " in line and "a.json;" in line, line
    (tmp_path / "runs" / "a copy.json").write_text(json.dumps(valid(2) | {"global_batch": 64}))
    line = one_error_line(launch("report", tmp_path, timeout=60))
    assert "are not one series" in line and "global batch 64 vs 128" in line, line


def test_fifo_named_json_does_not_block(tmp_path, launch):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "a.json").write_text(json.dumps(valid(1)))
    os.mkfifo(tmp_path / "runs" / "x.json")
    line = one_error_line(launch("report", tmp_path, timeout=60))
    assert "x.json: is a FIFO, expected a regular JSON file" in line


def test_plots_in_the_way_keeps_the_earlier_report(tmp_path, launch):
    write_runs(tmp_path, all_runs())
    assert launch("report", tmp_path, timeout=120).returncode == 0
    before = {n: (tmp_path / n).read_bytes() for n in ("report.md", "scaling.csv")}
    for p in (tmp_path / "plots").iterdir():
        p.unlink()
    (tmp_path / "plots").rmdir()
    (tmp_path / "plots").write_text("a file where the plots folder should be")
    line = one_error_line(launch("report", tmp_path, timeout=120))
    assert "cannot write" in line and "plots" in line and "a file stands where its folder should be" in line, line
    assert {n: (tmp_path / n).read_bytes() for n in before} == before
