"""Run files that do not belong in one report are refused in one line naming both files: two files
for one point (a copied run file), or points of one series that compare different models,
batches or dtypes (a sweep re-run into the same folder with other settings)."""
import shutil
from pathlib import Path

import pytest

from ddp_scratch.study.report import aggregate, load_runs, write_report
from test_report import run, write_runs


def report_of(tmp_path, runs):
    write_runs(tmp_path, runs)
    return Path(write_report(tmp_path)).read_text()


def refusal(tmp_path, runs):
    write_runs(tmp_path, runs)
    with pytest.raises(ValueError) as info:
        write_report(tmp_path)
    msg = str(info.value)
    assert "\n" not in msg and not (tmp_path / "report.md").exists()
    return msg


def test_a_copied_run_file_is_refused_naming_both_files(tmp_path):
    write_runs(tmp_path, [run("weak", n, 0, 0.1) for n in (1, 2)])
    shutil.copy(tmp_path / "runs" / "weak_n2_r0.json", tmp_path / "runs" / "backup copy.json")
    with pytest.raises(ValueError) as info:
        load_runs(tmp_path)
    msg = str(info.value)
    assert msg.startswith("two run files for one point (weak scaling of weak-mlp, N = 2, repeat 0): ")
    assert f"{tmp_path / 'runs' / 'backup copy.json'} and {tmp_path / 'runs' / 'weak_n2_r0.json'}" in msg
    assert "keep one of them" in msg
    (tmp_path / "runs" / "backup copy.json").unlink()
    assert len(load_runs(tmp_path)) == 2


def mixed(mode, field, value, n=2):
    """A 2-point series whose second point differs from the first in one field."""
    a, b = run(mode, 1, 0, 0.1), run(mode, n, 0, 0.06)
    for r in (a, b):
        r.update(dtype="float32", n_params=1000)
    b[field] = value
    return [a, b]


@pytest.mark.parametrize("mode, field, value, says", [
    ("weak", "per_rank_batch", 8, "per-rank batch 32 vs 8"),
    ("strong", "global_batch", 64, "global batch 128 vs 64"),
    ("weak", "model", "gpt", "model mlp vs gpt"),
    ("strong", "n_params", 2_000_000, "parameters 1,000 vs 2,000,000"),
    ("weak", "dtype", "float64", "dtype float32 vs float64"),
])
def test_points_of_one_series_that_compare_different_things_are_refused(tmp_path, mode, field, value, says):
    msg = refusal(tmp_path, mixed(mode, field, value))
    first, second = (str(tmp_path / "runs" / f"{mode}_n{n}_r0.json") for n in (1, 2))
    assert msg.startswith(f"{first} and {second} are not one series ({mode} scaling of {mode}-mlp): {says}; ")
    assert "own output folder (scaling --out NEW_FOLDER)" in msg


def test_points_of_one_series_with_other_communication_are_refused(tmp_path):
    """Run files of one series (no --compare setting tells them apart) that communicated otherwise."""
    rs = mixed("weak", "comm", {"algorithm": "ring", "compress": "bf16", "error_feedback": True})
    rs[0]["comm"] = {"algorithm": "mpi", "compress": "none", "error_feedback": False}
    msg = refusal(tmp_path, rs)
    assert "communication mpi, none vs ring, bf16, error feedback;" in msg and "scaling --compare" in msg
    rs[1]["setting"] = "comm.algorithm=ring, comm.compress=bf16, comm.error_feedback=true"   # a setting of its own
    write_runs(tmp_path / "compared", rs)
    assert len(aggregate(load_runs(tmp_path / "compared"))) == 2


def test_the_users_case_a_different_model_at_another_batch_is_refused(tmp_path):
    """[512,512] at per-rank batch 8 next to [128,64] at 64 (same config name, no n_params): the
    batch and the model's FLOPs per sample both differ."""
    big = [run("weak", n, 0, 0.02 * n, per_rank=8, flops_per_sample=1.6e6) for n in (2, 4)]
    small = [run("weak", 1, 0, 0.001, per_rank=64, flops_per_sample=2.2e5)]
    msg = refusal(tmp_path, small + big)
    assert "per-rank batch 64 vs 8; model FLOPs per sample 220,000 vs 1,600,000" in msg


def test_what_is_unknown_or_meant_to_vary_is_no_difference(tmp_path):
    rs = [run("strong", n, 0, 0.1 / n) for n in (1, 2, 4)]      # per-rank batch varies: strong scaling
    rs[0]["dtype"], rs[1]["dtype"] = "float32", None               # older file without a dtype
    rs[2]["n_params"] = 5                                          # only one file knows it
    rs += [run("weak", n, 0, 0.1) for n in (1, 2)]                 # global batch varies: weak scaling
    rs += [run("weak", 1, 0, 0.1, config="other", per_rank=8)]    # another series may differ
    assert len(aggregate(rs)) == 6
    assert report_of(tmp_path, rs).startswith("# Scaling report")
