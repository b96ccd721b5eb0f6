"""bench-comm: the projection says which alpha/bandwidth it used, a poor fit warns, the plot is a
300 dpi PNG + PDF with words and units, and bad or implausible --alpha-us / --bandwidth-gbps and a
bad --out are one line; the console explains busbw and prints weak and strong projections."""
import io
import json
import warnings

import numpy as np
import pytest

from ddp_scratch.study import bench_comm
from ddp_scratch.study.bench_comm import GBPS, R2_POOR, analyse, fit_warning, projection_lines, projection_text
from ddp_scratch.study.comm_model import predict_allreduce, project_efficiency
from test_report import png_dpi

SIZES = [4096 << (2 * k) for k in range(8)]
COMPUTE = {"mlp_digits": (0.01, 4e6)}


def meas(noise=0.0, seed=0, alpha=5e-6, beta=1 / 5e9):
    rng = np.random.default_rng(seed)
    t = predict_allreduce(np.array(SIZES, float), 2, alpha, beta) * np.exp(noise * rng.standard_normal(len(SIZES)))
    return [{"bytes": s, "seconds": float(x), "iters": 10, "busbw_GBps": 1.0} for s, x in zip(SIZES, t)]


def test_projection_with_the_fit_says_so_and_needs_no_warning(tmp_path):
    res = analyse(meas(), 2, tmp_path, compute=COMPUTE)
    assert res["fit"]["r2"] > 0.999 and not res["fit"]["poor"]
    assert fit_warning(res) is None
    assert projection_text(res) == f"projection with the fit: alpha = 5 us, bandwidth 5 {GBPS}"
    saved = json.loads((tmp_path / "bench_comm.json").read_text())
    assert saved["projection_note"] == projection_text(res) and saved["fit"]["r2_poor_below"] == R2_POOR
    fig = bench_comm.figure(res)
    assert fig.axes[1].get_title().endswith("with the fit: α = 5 µs, 5 GB/s")
    assert fig.axes[1].get_ylabel() == "predicted parallel efficiency (%)"
    assert fig.axes[0].get_xlabel() == "message size (gradient bytes)"
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["4 KiB", "64 KiB", "1 MiB", "16 MiB"]
    png = (tmp_path / "bench_comm.png").read_bytes()
    assert png_dpi(png) == 300 and (tmp_path / "bench_comm.pdf").read_bytes()[:5] == b"%PDF-"


def test_projection_with_given_values_says_so_and_uses_them(tmp_path):
    res = analyse(meas(), 2, tmp_path, alpha=2e-6, beta=1 / 25e9, compute=COMPUTE)
    text = projection_text(res)
    assert text == ("projection with the given alpha = 2 us, bandwidth 25 GB/s (gigabytes per second; divide "
                    "Gbit/s by 8) from --alpha-us and --bandwidth-gbps, not the fit")
    want = project_efficiency(0.01, 4e6, [8, 16, 32, 64, 128, 256, 512, 1024], 2e-6, 1 / 25e9, "weak")
    assert res["projections"]["mlp_digits"]["weak"] == want
    fig = bench_comm.figure(res)
    assert "with the given α = 2 µs, 25 GB/s, not the fit" in fig.axes[1].get_title()
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[1].startswith("fit: α = 5 µs, 5 GB/s") and labels[2] == "given: α = 2 µs, 25 GB/s"


def test_projection_table_columns_never_run_together(tmp_path):
    """Efficiencies from 99.6 % down to 0.000299 %: every cell is separated from the next by spaces,
    and the columns line up under the ranks."""
    res = analyse(meas(), 2, tmp_path, alpha=50e-6, beta=1 / 2e9, compute={"tiny": (1e-5, 4e6)})
    lines = projection_lines(res)
    ranks, weak, strong = lines[1], lines[2], lines[3]
    for line in (weak, strong):
        cells = line.split()[1:]
        assert len(cells) == 8 and all(float(c) >= 0 for c in cells), line
        assert len(line) == len(ranks)
    assert any(c.startswith("0.0") for c in strong.split()[1:])
    ends = [i for i, (a, b) in enumerate(zip(ranks, ranks[1:] + " ")) if a != " " and b == " "]
    assert [i for i, (a, b) in enumerate(zip(strong, strong[1:] + " ")) if a != " " and b == " "][1:] == ends[1:]


def test_a_poor_fit_warns_and_names_what_to_do(tmp_path):
    res = analyse(meas(noise=1.5, seed=3), 2, tmp_path, compute=COMPUTE)
    assert res["fit"]["r2"] < R2_POOR and res["fit"]["poor"]
    w = fit_warning(res)
    assert w.startswith(f"warning: poor alpha-beta fit (r2 {res['fit']['r2']:.2f} < {R2_POOR})")
    assert "the projection built on it is unreliable" in w
    assert "quieter machine" in w and f"--alpha-us in microseconds and --bandwidth-gbps in {GBPS}" in w
    assert "\n" not in w
    assert "poor fit" in bench_comm.figure(res).axes[0].get_title()
    given = analyse(meas(noise=1.5, seed=3), 2, tmp_path, alpha=2e-6, beta=1 / 25e9)
    assert "the projection does not use it (given values)" in fit_warning(given)


@pytest.mark.parametrize("flags, message", [
    (["--alpha-us", "0", "--bandwidth-gbps", "25"], "bench-comm --alpha-us: expected a positive number"),
    (["--alpha-us", "-2", "--bandwidth-gbps", "25"], "bench-comm --alpha-us: expected a positive number"),
    (["--alpha-us", "2", "--bandwidth-gbps", "0"], "bench-comm --bandwidth-gbps: expected a positive number"),
    (["--alpha-us", "2", "--bandwidth-gbps", "nan"], "bench-comm --bandwidth-gbps: expected a positive number"),
    (["--alpha-us", "inf", "--bandwidth-gbps", "25"], "bench-comm --alpha-us: expected a positive number"),
    (["--alpha-us", "1e300", "--bandwidth-gbps", "1e-300"],
     "bench-comm --alpha-us: expected a latency of at most 1,000,000 microseconds (1 s;"),
    (["--alpha-us", "2", "--bandwidth-gbps", "1e-300"],
     f"bench-comm --bandwidth-gbps: expected 0.001 to 10,000 {GBPS}, that is 1 MB/s to 10 TB/s, got 1e-300"),
    (["--alpha-us", "2", "--bandwidth-gbps", "20000"], "bench-comm --bandwidth-gbps: expected 0.001 to 10,000"),
])
def test_bad_alpha_or_bandwidth_is_one_line(tmp_path, launch, flags, message):
    r = launch("bench-comm", "-n", 2, "--out", tmp_path / "o", "--configs", "", *flags, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {message}"), r.stderr
    assert not (tmp_path / "o").exists()                  # refused before anything was measured


@pytest.mark.parametrize("alpha, beta, flag", [(1.5, 1 / 25e9, "--alpha-us"), (2e-6, 1 / 1e5, "--bandwidth-gbps"),
                                               (2e-6, 1 / 2e13, "--bandwidth-gbps"), (2e-6, 0.0, "--bandwidth-gbps")])
def test_analyse_refuses_implausible_given_values_and_writes_nothing(tmp_path, alpha, beta, flag):
    with pytest.raises(ValueError, match=f"^{flag}: expected"):
        analyse(meas(), 2, tmp_path / "o", alpha=alpha, beta=beta, compute=COMPUTE)
    assert not (tmp_path / "o").exists()
    analyse(meas(), 2, tmp_path / "edge", alpha=1.0, beta=1 / 1e6, compute=COMPUTE)   # 1 s, 1 MB/s: allowed


def test_absurd_values_reaching_the_plot_warn_nothing_and_keep_the_measurement_visible(tmp_path):
    res = analyse(meas(), 2, tmp_path, alpha=2e-6, beta=1 / 25e9, compute=COMPUTE)
    res["projection_params"].update(alpha_s=1e294, beta_s_per_byte=1e291)     # as --alpha-us 1e300 would
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # an overflow in the plot code fails here
        fig = bench_comm.figure(res)
        fig.savefig(io.BytesIO(), format="png", dpi=20)
        assert set(bench_comm._plot(res)) == {"bench_comm.png", "bench_comm.pdf"}
    lo, hi = fig.axes[0].get_ylim()
    measured = [m["seconds"] * 1e6 for m in res["measured"]]
    assert lo <= min(measured) and max(measured) <= hi, (lo, hi)      # the left panel is not empty


def test_console_projection_has_weak_and_strong_rows():
    res = {"projections": {"mlp": {"compute_s": 0.0015, "grad_bytes": 400 << 10,
                                   "weak": [{"world_size": n, "efficiency": e} for n, e in ((8, 0.991), (16, 0.5))],
                                   "strong": [{"world_size": n, "efficiency": e} for n, e in ((8, 0.8), (16, 0.00523))]}}}
    assert projection_lines(res) == [
        "mlp: compute 1.5 ms/step, gradients 400 KiB; predicted parallel efficiency (%):",
        "  ranks       8     16",
        "  weak     99.1     50",
        "  strong     80  0.523"]


def test_out_that_is_a_file_is_one_line(tmp_path, launch):
    f = tmp_path / "results.json"
    f.write_text("keep me")
    r = launch("bench-comm", "-n", 2, "--out", f, "--configs", "", timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0] == f"error: bench-comm --out: {f} is a file, expected a folder (new or existing)"
    assert f.read_text() == "keep me"


def test_bench_comm_console_names_the_projection_parameters(tmp_path, launch):
    r = launch("bench-comm", "-n", 2, "--out", tmp_path, "--configs", "experiments/mlp_digits.yaml",
               "--alpha-us", "2", "--bandwidth-gbps", "25", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout.splitlines()
    assert (f"projection with the given alpha = 2 us, bandwidth 25 {GBPS} from --alpha-us and "
            "--bandwidth-gbps, not the fit") in out
    assert r.stdout.count("busbw = bus bandwidth 2(N-1)/N x bytes / time") == 1      # explained once
    assert out[0].startswith("all-reduce (sum of float32) on 2 ranks") and "busbw" in out[1]
    at = [i for i, line in enumerate(out) if line.startswith("mlp_digits: compute ")]
    assert len(at) == 1, out
    rows = [line.split()[0] for line in out[at[0] + 1:at[0] + 4]]
    assert rows == ["ranks", "weak", "strong"], out          # both projections, as in the plot
    res = json.loads((tmp_path / "bench_comm.json").read_text())
    warned = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == (1 if res["fit"]["r2"] < R2_POOR else 0), r.stderr
    assert res["environment"]["logical_cores"] >= 1
    assert png_dpi((tmp_path / "bench_comm.png").read_bytes()) == 300


def test_a_ring_measurement_says_what_was_timed(tmp_path):
    """bench-comm --algorithm ring times the hand-written ring: the JSON and the plot say so."""
    res = analyse(meas(), 2, tmp_path, algorithm="ring")
    assert json.loads((tmp_path / "bench_comm.json").read_text())["algorithm"] == "ring"
    ax = bench_comm.figure(res).axes[0]
    assert ax.get_title() == "Hand-written ring on 2 ranks"
    assert ax.get_legend_handles_labels()[1][0].startswith("measured: hand-written ring (2 ranks")
    assert bench_comm.figure(analyse(meas(), 2, tmp_path)).axes[0].get_title() == "MPI_Allreduce on 2 ranks"
