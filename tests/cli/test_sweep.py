"""Scaling sweeps end to end (1 and 2 ranks -> run JSONs, CSV, PNG plots, report), the report
rebuild, the communication micro-benchmark with its alpha-beta fit and projection."""
import csv
import json
import os
import shutil

import pytest

from conftest import run_launch

PNG = b"\x89PNG\r\n\x1a\n"


def sweep_args(mode, out):
    """The sweep the tests share: the digits MLP on 1 and 2 ranks, 3 timed steps after 1 warm-up."""
    return ["scaling", "experiments/mlp_digits.yaml", "--mode", mode, "--ranks", "1,2", "--steps", "3",
            "--warmup", "1", "--out", out]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """sweep(mode, dest) -> the launch result of the shared MODE sweep, its folder copied to dest
    (each test changes its own copy; a sweep's identity holds no path, so the copy is that sweep).
    Each mode is measured once per module: a sweep is two training runs and a report with plots."""
    made = {}

    def get(mode, dest):
        if mode not in made:
            out = tmp_path_factory.mktemp("sweep") / mode
            made[mode] = (out, run_launch(*sweep_args(mode, out), timeout=300))
        out, r = made[mode]
        assert r.returncode == 0, r.stderr[-3000:]
        shutil.copytree(out, dest)
        return r
    return get


@pytest.mark.parametrize("mode", ["strong", "weak"])
def test_sweep_1_and_2_ranks_writes_csv_plots_and_report(tmp_path, launch, mode, sweep):
    out = tmp_path / mode
    r = sweep(mode, out)
    assert "[1/2]" in r.stdout and "[2/2]" in r.stdout and "ETA" in r.stdout
    runs = sorted((out / "runs").glob("*.json"))
    assert len(runs) == 2
    for p in runs:
        j = json.loads(p.read_text())
        assert j["mode"] == mode and j["steps"] == 3
        assert j["step_time_s"]["min"] <= j["step_time_s"]["median"] <= j["step_time_s"]["max"]
        assert j["energy"]["source"].startswith(("estimated", "measured"))
    gb = {json.loads(p.read_text())["world_size"]: json.loads(p.read_text())["global_batch"] for p in runs}
    assert gb == ({1: 64, 2: 64} if mode == "strong" else {1: 64, 2: 128})
    rows = list(csv.DictReader(open(out / "scaling.csv")))
    assert [int(r["world_size"]) for r in rows] == [1, 2]
    assert float(rows[0]["efficiency_mean"]) == pytest.approx(1.0)
    plots = list((out / "plots").glob("*.png"))
    assert len(plots) >= 4
    for p in plots:
        data = p.read_bytes()
        assert data.startswith(PNG) and len(data) > 1000
    report = (out / "report.md").read_text()
    assert all(f"plots/{p.name}" in report for p in plots) and "ESTIMATED" in report
    # the report can be rebuilt from the JSONs alone
    (out / "report.md").unlink()
    assert launch("report", out).returncode == 0 and (out / "report.md").exists()


def test_report_of_a_folder_without_runs_is_one_line(tmp_path, launch):
    r = launch("report", tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_bad_ranks_list(tmp_path, launch):
    r = launch("scaling", "experiments/mlp_digits.yaml", "--mode", "weak", "--ranks", "1,two", "--out", tmp_path)
    assert r.returncode == 2 and "--ranks" in r.stderr


def test_bench_comm_fits_and_projects(tmp_path, launch):
    """--configs takes a path or a bare name of experiments/ (as the projection names them)."""
    r = launch("bench-comm", "-n", 2, "--out", tmp_path, "--configs", "mlp_digits",
               "--alpha-us", "2", "--bandwidth-gbps", "25", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "bench_comm.json").read_text())
    assert len(res["measured"]) == 8 and res["fit"]["alpha_s"] >= 0 and res["fit"]["beta_s_per_byte"] > 0
    proj = res["projections"]["mlp_digits"]["weak"]
    assert [p["world_size"] for p in proj] == [8, 16, 32, 64, 128, 256, 512, 1024]
    assert res["projection_params"] == {"alpha_s": 2e-6, "beta_s_per_byte": 1 / 25e9, "source": "given"}
    effs = [p["efficiency"] for p in proj]
    assert all(a >= b for a, b in zip(effs, effs[1:]))      # efficiency falls with the world size
    assert (tmp_path / "bench_comm.png").read_bytes().startswith(PNG)


def test_sweep_is_logged_to_wandb_offline_when_enabled(tmp_path, launch):
    pytest.importorskip("wandb")
    out = tmp_path / "w"
    r = launch("scaling", "experiments/mlp_digits.yaml", "--mode", "weak", "--ranks", "1,2", "--steps", 4,
               "--warmup", 1, "--out", out, "--set", "logging.wandb=true", env={"WANDB_MODE": "offline"}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "warning" not in r.stdout
    sweep_runs = list((out / "wandb").glob("offline-run-*"))
    assert len(sweep_runs) == 1, "one W&B run for the sweep's table and plots"


def test_every_point_uses_one_thread_count_and_a_folder_holds_one_sweep(tmp_path, launch, sweep):
    """By default 1 rank would take all cores and N ranks 1/N each (efficiency above 100 %): the
    sweep pins one count. A second, different sweep into the folder is refused, or replaces it."""
    out = tmp_path / "one"
    args = sweep_args("weak", out)
    r = sweep("weak", out)
    assert "threads per rank: 1 at every point" in r.stdout
    threads = {json.load(open(p))["environment"]["threads_per_rank"] for p in (out / "runs").glob("*.json")}
    assert threads == {1}
    r = launch(*args[:-6], "--ranks", "1", "--steps", "3", "--warmup", "1", "--batch", "8", "--out", out)
    assert r.returncode == 2 and "holds another sweep (batch 64 before, 8 now)" in r.stderr
    r = launch(*args[:-6], "--ranks", "1", "--steps", "3", "--warmup", "1", "--batch", "8", "--out", out,
               "--overwrite", timeout=300)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (out / "runs").glob("*.json")) == ["mlp_digits-weak-n1-r0.json"]
    r = launch(*args[:-6], "--ranks", "2", "--steps", "3", "--warmup", "1", "--batch", "8", "--out", out, timeout=300)
    assert r.returncode == 2 and "already holds 1 run file(s) of this sweep; --resume continues it" in r.stderr
    r = launch(*args[:-6], "--ranks", "2", "--steps", "3", "--warmup", "1", "--batch", "8", "--out", out,
               "--resume", timeout=300)
    assert r.returncode == 0, r.stderr             # the same sweep, one more point: added
    assert len(list((out / "runs").glob("*.json"))) == 2


def test_the_same_sweep_again_is_refused_unless_resume_or_overwrite(tmp_path, launch, sweep):
    """Run again into its folder, a sweep would silently replace its measurements; --resume keeps
    every complete run file of this sweep and runs only the rest (an interrupted sweep: a missing
    or broken file), then rebuilds the report; --overwrite measures every point afresh."""
    out = tmp_path / "s"
    args = sweep_args("strong", out)
    sweep("strong", out)
    runs = {p.name: p.read_bytes() for p in (out / "runs").glob("*.json")}
    r = launch(*args)
    assert r.returncode == 2 and "already holds 2 run file(s) of this sweep" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in (out / "runs").glob("*.json")} == runs       # nothing lost
    r = launch(*args, "--resume", "--overwrite")
    assert r.returncode == 2 and "give one of them" in r.stderr
    (out / "runs" / "mlp_digits-strong-n2-r0.json").unlink()         # as a Ctrl-C in point 2 leaves it
    (out / "report.md").unlink()
    r = launch(*args, "--resume", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "resume: 1 point(s) already measured, 1 to run" in r.stdout and "[1/1]" in r.stdout
    assert (out / "runs" / "mlp_digits-strong-n1-r0.json").read_bytes() == runs["mlp_digits-strong-n1-r0.json"]
    assert (out / "report.md").exists()
    (out / "runs" / "mlp_digits-strong-n1-r0.json").write_text('{"mode": "strong"')    # cut short
    r = launch(*args, "--resume", timeout=300)
    assert r.returncode == 0 and "resume: 1 point(s) already measured, 1 to run" in r.stdout, r.stderr
    json.loads((out / "runs" / "mlp_digits-strong-n1-r0.json").read_text())
    r = launch(*args[:-2], "--steps", "4", "--out", out, "--resume")
    assert r.returncode == 2 and "holds another sweep (steps 3 before, 4 now); --resume continues only" in r.stderr
    r = launch(*args, "--overwrite", timeout=300)
    assert r.returncode == 0 and "[2/2]" in r.stdout, r.stderr


def test_compared_settings_are_series_with_bytes_on_the_wire_and_their_plot(tmp_path, launch):
    """--compare comm.compress=none,bf16 on the ring, 1 and 2 ranks: four points, each run file
    records its setting, communication and bytes (counted by the ring: bf16 sends half); the CSV
    has the columns, report.md the Communication table, plots/ the time-against-bytes figure.
    A resumed sweep keeps its points (another --compare into the folder: test_bad_input)."""
    out = tmp_path / "cmp"
    args = ["scaling", "experiments/mlp_digits.yaml", "--mode", "weak", "--ranks", "1,2", "--steps", "3",
            "--warmup", "1", "--set", "comm.algorithm=ring", "--compare", "comm.compress=none,bf16", "--out", out]
    r = launch(*args, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "comparing 2 settings at every point: comm.compress=none; comm.compress=bf16" in r.stdout
    runs = {(j["setting"], j["world_size"]): j for j in (json.loads(p.read_text()) for p in (out / "runs").glob("*.json"))}
    assert sorted(runs) == [(f"comm.compress={c}", n) for c in ("bf16", "none") for n in (1, 2)]
    for (setting, n), j in runs.items():
        assert j["comm"] == {"algorithm": "ring", "compress": setting.split("=")[1], "error_feedback": False, "zero": 0}
        assert j["comm_bytes_per_step_source"] == ("counted" if n == 2 else "none")
        assert "optim_state_bytes_per_rank" in j
    full = runs[("comm.compress=none", 2)]["comm_bytes_per_step"]
    # half the bytes, give or take the few values the ring keeps in float32 (its statistics slots)
    assert full > 0 and full / 2 <= runs[("comm.compress=bf16", 2)]["comm_bytes_per_step"] < 0.51 * full
    assert runs[("comm.compress=none", 1)]["comm_bytes_per_step"] == 0
    rows = list(csv.DictReader(open(out / "scaling.csv")))
    assert [(r["setting"], r["world_size"]) for r in rows] == [   # in the order of --compare
        (f"comm.compress={c}", n) for c in ("none", "bf16") for n in ("1", "2")]
    for col in ("comm_algorithm", "comm_compress", "comm_error_feedback", "comm_bytes_per_step_mean",
                "comm_bytes_per_step_source", "comm_s", "optim_state_bytes_per_rank_mean"):
        assert col in rows[0], col
    assert {float(r["efficiency_mean"]) for r in rows if r["world_size"] == "1"} == {1.0}   # each its own baseline
    plots = {p.name for p in (out / "plots").glob("*.png")}
    assert {"throughput.png", "comm_vs_bytes.png", "time_breakdown.png"} <= plots
    assert all((out / "plots" / p).read_bytes().startswith(PNG) for p in plots)
    md = (out / "report.md").read_text()
    assert "### MLP, weak scaling, comm.compress=bf16" in md and "## Communication" in md
    assert "| MLP, weak scaling, comm.compress=bf16 | 2 | ring | bf16 | no |" in md and "counted" in md
    assert "plots/comm_vs_bytes.png" in md
    r = launch(*args, "--resume", timeout=300)
    assert r.returncode == 0 and "resume: 4 point(s) already measured, 0 to run" in r.stdout, r.stderr


def test_a_slurm_sweep_whose_job_sbatch_refuses_is_one_line(tmp_path):
    """scaling --slurm where sbatch says no (no controller, here a stand-in sbatch on PATH that
    answers as one does): one line naming the point and sbatch's reason, exit 2, and no pickles of
    a job that was never queued."""
    import stat
    from conftest import ROOT, run_launch
    pytest.importorskip("submitit")
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'sbatch: error: Batch job submission failed: Unable to contact slurm controller "
                    "(connect failure)' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    env = dict(os.environ, PATH=f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "sw"
    r = run_launch("scaling", os.path.join(ROOT, "experiments", "mlp_digits.yaml"), "--mode", "weak", "--ranks", "1,2",
                   "--steps", "3", "--out", out, "--slurm", env=env, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last == ("error: scaling --slurm: the job of the 1-rank point was not accepted: sbatch: error: Batch job "
                    "submission failed: Unable to contact slurm controller (connect failure)"), last
    assert not list(out.rglob("*.pkl"))


def test_sweep_point_keeps_another_runs_point_unless_told(tmp_path):
    """sweep-point files a finished run as NAME-MODE-nN-rR.json: filing the same run again replaces
    it, a different run (here other steps and the ring) under the same name is refused in one line
    with nothing changed, and --overwrite replaces it."""
    from conftest import run_launch
    runs = {}
    for name, sets in (("a", ["train.max_steps=12"]), ("b", ["train.max_steps=16", "comm.algorithm=ring"])):
        runs[name] = tmp_path / name
        r = run_launch("train", "experiments/mlp_digits.yaml", "--out", runs[name], "--quiet",
                       *[x for s in sets for x in ("--set", s)], "--set", "train.timing_skip=2")
        assert r.returncode == 0, r.stderr
    into = tmp_path / "sweep"
    filed = into / "runs" / "mlp_digits-weak-n1-r0.json"

    def file(run, *extra):
        return run_launch("sweep-point", run, "--into", into, "--mode", "weak", "--name", "mlp_digits", *extra)
    assert file(runs["a"]).returncode == 0 and file(runs["a"]).returncode == 0      # a re-filing replaces
    before = filed.read_bytes()
    r = file(runs["b"])
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "already holds this point of another run (steps 10 there, 14 here" \
        in lines[0] and lines[0].endswith("or --overwrite to replace it"), r.stderr
    assert filed.read_bytes() == before
    assert file(runs["b"], "--overwrite").returncode == 0
    assert json.loads(filed.read_text())["steps"] == 14
