"""study/plots.py: poster-ready figures. Each figure is drawn and measured: legends outside the axes,
y from 0 with every plotted value inside, human labels, the hardware line as subtitle."""
import pytest

from ddp_scratch.study import plots
from ddp_scratch.study.report import aggregate
from test_report import all_runs, run

SUBTITLE = "AMD EPYC · 2 hosts · 2026-05-09"


def figures(rows, monkeypatch, subtitle=SUBTITLE):
    """{name: drawn matplotlib Figure} of render_plots(rows), at a low dpi for speed."""
    got = {}
    original = plots._Plotter.save

    def keep(self, fig, name):
        got[name] = fig
        original(self, fig, name)
    monkeypatch.setattr(plots._Plotter, "save", keep)
    monkeypatch.setattr(plots, "DPI", 40)
    out = plots.render_plots(rows, subtitle)
    assert sorted(out) == sorted(f"{n}.{e}" for n in got for e in ("png", "pdf"))
    for fig in got.values():
        fig.canvas.draw()
    return got


def plotted_tops(ax):
    """The highest y of every line, error bar and bar in ax (data units)."""
    import numpy as np
    from matplotlib.collections import LineCollection
    ys = []
    for line in ax.get_lines():
        y = np.asarray(line.get_ydata(), dtype=float)
        ys += list(y[np.isfinite(y)])
    for patch in ax.patches:
        ys.append(patch.get_y() + patch.get_height())
    for coll in ax.collections:
        if isinstance(coll, LineCollection):
            for seg in coll.get_segments():
                ys += [float(v) for v in seg[:, 1] if np.isfinite(v)]
    return ys


def overlaps(a, b):
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("case", ["2 series, 3-4 worlds", "1 series, 1 world", "1 series, 4 worlds", "GPT and MLP"])
def test_layout_nothing_clipped_or_covered(case, monkeypatch):
    runs = {"2 series, 3-4 worlds": all_runs(), "GPT and MLP": gpt_and_mlp(),
            "1 series, 1 world": [run("weak", 1, 0, 0.5, source="measured-rapl")],
            "1 series, 4 worlds": [run("strong", n, 0, 1.0 / n) for n in (1, 2, 4, 8)]}[case]
    figs = figures(aggregate(runs), monkeypatch)
    want = {"throughput", "efficiency", "time_breakdown", "flops"}
    assert want <= set(figs) and set(figs) <= want | {"energy"}
    for name, fig in figs.items():
        renderer = fig.canvas.get_renderer()
        (sub,) = fig.subfigs
        assert fig._suptitle.get_text() and sub._suptitle.get_text() == SUBTITLE, name
        axes = fig.get_axes()
        legends = sub.legends
        assert legends, f"{name}: no legend"
        for ax in axes:
            lo, hi = ax.get_ylim()
            tops = plotted_tops(ax)
            if ax.get_yscale() == "log":     # the rate plots over several worlds: log-log, all inside
                assert name in ("throughput", "flops") and 0 < lo <= min(tops) / 1.2, f"{name}: {lo}"
            else:
                assert lo == 0, f"{name}: y axis starts at {lo}"
            assert tops and max(tops) <= hi * 0.98, f"{name}: data reaches {max(tops)} of {hi}"
            assert ax.get_ylabel() and "(" in ax.get_ylabel() and ax.get_xlabel(), name   # units
            box = ax.get_window_extent(renderer)
            for leg in legends:
                assert not overlaps(leg.get_window_extent(renderer), box), f"{name}: legend covers axes"
            for text in ax.texts:            # the step-time labels above the bars stay inside
                assert box.y0 <= text.get_window_extent(renderer).y1 <= box.y1 + 1, name
        labels = [t.get_text() for leg in legends for t in leg.get_texts()]
        assert not [t for t in labels if "weak:" in t or "strong:" in t], labels
        assert any("scaling" in t for t in labels) or name == "time_breakdown", labels


def test_series_labels_are_words():
    rows = aggregate(all_runs() + [run("weak", 2, 0, 0.5, config="other-weak")])
    assert plots.series_labels(rows) == {("strong", "strong-mlp", ""): "MLP, strong scaling",
                                         ("weak", "other-weak", ""): "MLP, weak scaling (other-weak)",
                                         ("weak", "weak-mlp", ""): "MLP, weak scaling (weak-mlp)"}
    compared = [dict(run("weak", 2, 0, 0.5), setting=f"comm.algorithm={a}") for a in ("mpi", "ring")]
    assert plots.series_labels(aggregate(compared)) == {
        ("weak", "weak-mlp", "comm.algorithm=mpi"): "MLP, weak scaling, comm.algorithm=mpi",
        ("weak", "weak-mlp", "comm.algorithm=ring"): "MLP, weak scaling, comm.algorithm=ring"}


def test_time_breakdown_stacks_the_four_phases_to_the_step(monkeypatch):
    r = run("strong", 1, 0, 0.1)
    r["compute_s"], r["comm_s"], r["wait_s"] = ({"min": v, "median": v, "max": v} for v in (0.05, 0.02, 0.01))
    ax = figures(aggregate([r]), monkeypatch)["time_breakdown"].get_axes()[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([50, 20, 10, 20])            # ms: compute, comm, wait, other
    assert sum(heights) == pytest.approx(100)                    # = the measured step
    assert ax.get_ylabel() == "time per step (ms)"


def test_energy_plot_only_for_measured_energy(monkeypatch):
    est = [run("weak", n, 0, 0.1, source="estimated-tdp") for n in (1, 2)]
    assert "energy" not in figures(aggregate(est), monkeypatch)
    mixed = est + [run("strong", n, 0, 0.1, source="measured-nvml") for n in (1, 2)]
    fig = figures(aggregate(mixed), monkeypatch)["energy"]
    assert "NVML" in fig._suptitle.get_text()
    labels = [t.get_text() for t in fig.subfigs[0].legends[0].get_texts()]
    assert labels == ["MLP, strong scaling"]                     # the estimated series is left out


def test_user_text_cannot_break_matplotlib(monkeypatch):
    r = run("weak", 1, 0, 0.1, config="cost $5 in ^_{x}$ $$")
    r["model"] = "my$model"
    figs = figures(aggregate([r]), monkeypatch, subtitle="$\\frac{ · " + "x" * 500)
    assert len(figs["throughput"].subfigs[0]._suptitle.get_text()) <= 170


def test_units_follow_the_values(monkeypatch):
    slow = [run("weak", n, 0, 400.0, per_rank=1) for n in (1, 2)]     # 0.0025-0.005 samples/s, 400 s steps
    figs = figures(aggregate(slow), monkeypatch)
    assert figs["throughput"].get_axes()[0].get_ylabel() == "throughput, all ranks (samples/s)"
    assert figs["time_breakdown"].get_axes()[0].get_ylabel() == "time per step (s)"
    fast = [run("weak", n, 0, 0.004, per_rank=4096, flops_per_sample=1e3) for n in (1, 2)]  # ~1-2 million samples/s
    figs = figures(aggregate(fast), monkeypatch)
    assert figs["throughput"].get_axes()[0].get_ylabel() == "throughput, all ranks (million samples/s)"
    assert figs["time_breakdown"].get_axes()[0].get_ylabel() == "time per step (ms)"
    assert figs["flops"].get_axes()[0].get_ylabel() == "FLOP/s, all ranks (GFLOP/s)"


def gpt_and_mlp():
    gpt = [run("strong", n, 0, 0.5 / n ** 0.8, config="gpt_strong") for n in (1, 2, 4)]
    for r in gpt:
        r.update(model="gpt", tokens_per_s=r["samples_per_s"] * 256)     # 256-token windows
    return gpt + [run("weak", n, 0, 0.01 * (1 + n / 20)) for n in (1, 2, 4, 8)]


def dashed(ax):
    return [line for line in ax.get_lines() if line.get_linestyle() == "--"]


@pytest.mark.parametrize("name, key", [("throughput", "samples_per_s"), ("flops", "flops_per_s")])
def test_ideal_is_a_straight_line_on_log_log_axes_in_each_series_colour(monkeypatch, name, key):
    """y = rate x N/b is straight only where both axes are log (log x with linear y drew it as a
    curve): the rate plots are log-log, the ideal runs from the baseline to the largest world, and
    the legend's dashed entries are the series' colours, one per series."""
    from matplotlib.colors import to_hex
    rows = aggregate(all_runs())
    fig = figures(rows, monkeypatch)[name]
    (ax,) = fig.get_axes()
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    scale = {"throughput": 1.0, "flops": 1e9}[name]                       # samples/s, GFLOP/s
    colors = {}
    for line in dashed(ax):
        x, y = (list(map(float, v)) for v in line.get_data())
        base = next(r for r in rows if r["world_size"] == r["baseline_world"] and
                    abs(r[key + "_mean"] / scale - y[0]) < 1e-9 * y[0])
        b = base["baseline_world"]
        worlds = [r["world_size"] for r in rows if (r["mode"], r["config"]) == (base["mode"], base["config"])]
        assert x == [b, max(worlds)]
        assert [yi * b / xi for xi, yi in zip(x, y)] == pytest.approx([base[key + "_mean"] / scale] * 2)
        (px0, py0), (px1, py1) = ax.transData.transform(list(zip(x, y)))
        mid = ax.transData.transform([((x[0] * x[1]) ** 0.5, (y[0] * y[1]) ** 0.5)])[0]
        assert mid == pytest.approx([(px0 + px1) / 2, (py0 + py1) / 2])     # straight on the page
        colors[(base["mode"], base["config"])] = to_hex(line.get_color())
    assert len(colors) == 2 and len(set(colors.values())) == 2
    entries = {t.get_text(): to_hex(h.get_color()) for leg in fig.subfigs[0].legends
               for t, h in zip(leg.get_texts(), leg.legend_handles) if h.get_linestyle() == "--"}
    assert entries == {"MLP, strong scaling: ideal (linear)": colors[("strong", "strong-mlp")],
                       "MLP, weak scaling: ideal (linear)": colors[("weak", "weak-mlp")]}


def test_titles_say_mean_and_std_only_with_repeats(monkeypatch):
    def titles(runs):
        return {k: f._suptitle.get_text() for k, f in figures(aggregate(runs), monkeypatch).items()}
    one = titles([run("strong", n, 0, 1.0 / n) for n in (1, 2)])
    two = titles([run("strong", n, i, 1.0 / n) for n in (1, 2) for i in (0, 1)])
    for name in ("throughput", "efficiency"):
        assert "repeats" not in one[name]
        assert two[name].endswith("(mean ± std over repeats)")


def test_oversubscribed_points_are_ringed_and_named(monkeypatch):
    from test_report import oversubscribed_runs
    figs = figures(aggregate(oversubscribed_runs()), monkeypatch)
    for name in ("throughput", "efficiency"):
        labels = [t.get_text() for leg in figs[name].subfigs[0].legends for t in leg.get_texts()]
        assert "oversubscribed: ranks shared cores (not scaling)" in labels
        rings = [c for c in figs[name].get_axes()[0].collections if c.get_offsets().shape[0] == 1
                 and len(c.get_facecolor()) == 0]
        assert [float(c.get_offsets()[0][0]) for c in rings] == [4.0]
    ticks = [t.get_text() for t in figs["time_breakdown"].get_axes()[0].get_xticklabels()]
    assert ticks == ["1", "2", "4\noversub-\nscribed"]


def test_one_series_has_one_ideal_entry_in_its_colour(monkeypatch):
    from matplotlib.colors import to_hex
    fig = figures(aggregate([run("strong", n, 0, 1.0 / n) for n in (1, 2, 4, 8)]), monkeypatch)["throughput"]
    leg = fig.subfigs[0].legends[0]
    labels = [t.get_text() for t in leg.get_texts()]
    assert labels == ["MLP, strong scaling", "ideal: linear from N = 1"]
    assert to_hex(leg.legend_handles[1].get_color()) == to_hex(dashed(fig.get_axes()[0])[0].get_color())


def test_gpt_throughput_in_tokens_per_second_on_its_own_panel(monkeypatch):
    rows = aggregate(gpt_and_mlp())
    fig = figures(rows, monkeypatch)["throughput"]
    tokens, samples = fig.get_axes()
    assert tokens.get_ylabel() == "throughput (thousand tokens/s)" and tokens.get_title().startswith("tokens per second")
    assert samples.get_ylabel() == "throughput (thousand samples/s)"
    for ax, rs, key in ((tokens, [r for r in rows if r["model"] == "gpt"], "tokens_per_s_mean"),
                        (samples, [r for r in rows if r["model"] == "mlp"], "samples_per_s_mean")):
        measured = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
        assert len(measured) == 1                                          # only its own series
        assert list(measured[0].get_ydata()) == pytest.approx([r[key] / 1e3 for r in rs])
        lo, hi = ax.get_ylim()
        assert max(measured[0].get_ydata()) > 0.3 * hi                     # not flattened at zero
    one_unit = figures(aggregate(all_runs()), monkeypatch)["throughput"]
    assert len(one_unit.get_axes()) == 1 and "samples/s" in one_unit.get_axes()[0].get_ylabel()
