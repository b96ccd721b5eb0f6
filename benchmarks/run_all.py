"""Run every benchmark, print a summary table, write results/results.json and results/RESULTS.md.

  python benchmarks/run_all.py            # ~5 min on a quiet 2-core machine, ~15 on a busy one
  python benchmarks/run_all.py --quick    # fewer windows: a smoke test (writes results/quick/)

Each benchmark runs in its own process (thread counts must be set before NumPy/torch load; the
2-rank ones under mpiexec). Before each, it waits for other processes to leave the CPUs (a shared
machine otherwise decides the figures). RESULTS.md is generated from the JSON, never by hand.
For a before/after comparison, --baseline-tree DIR runs another checkout's ddp_scratch as a third
side of the MLP benchmarks, in the same timing windows:

  git archive HEAD ddp_scratch | tar -x -C /tmp/base && python benchmarks/run_all.py --baseline-tree /tmp/base
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

HERE = common.HERE


def parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few windows and steps (smoke test)")
    ap.add_argument("--only", nargs="*", help="run only these (mlp_single mlp_ddp allreduce memory ...)")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for an idle machine")
    ap.add_argument("--openblas-variant", action="store_true",
                    help="where the environment pins OpenBLAS kernels (OPENBLAS_CORETYPE), also run the "
                         "MLP benchmarks with the variable unset (OpenBLAS's own choice), labelled as a variant")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--label", default="", help="free text stored with the results (e.g. a commit)")
    ap.add_argument("--baseline-tree", metavar="DIR",
                    help="another checkout: its ddp_scratch runs as a third side of the MLP benchmarks, "
                         "in the same windows (the reliable before/after comparison)")
    ap.add_argument("--report-only", action="store_true", help="rebuild RESULTS.md from the JSON files")
    return ap.parse_args()


def mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else "mpiexec"


def openblas_core(env):
    """The kernel family NumPy's OpenBLAS picks in a process with this environment."""
    out = subprocess.run([sys.executable, "-c", "import json, numpy, common; print(json.dumps(common.openblas_info()))"],
                         capture_output=True, text=True, cwd=HERE, env=env)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1]).get("corename", "")
    except (ValueError, IndexError):
        return ""


def openblas_pinned():
    """(pinned, auto) when OPENBLAS_CORETYPE pins other kernels than OpenBLAS would pick itself."""
    if not os.environ.get("OPENBLAS_CORETYPE"):
        return None
    pinned, auto = openblas_core(_env({})), openblas_core(_env({"OPENBLAS_CORETYPE": None}))
    return (pinned, auto) if pinned and auto and pinned != auto else None


def _env(extra):
    """The environment as given, with `extra` applied (a value of None removes the variable)."""
    env = dict(os.environ)
    for k, v in extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def plan(a):
    py, mpi = sys.executable, [mpiexec(), "-n", str(a.ranks)]
    q = ["--windows", "2", "--max-windows", "3", "--steps", "5", "--warmup", "3"] if a.quick else []
    if a.baseline_tree:
        q += ["--baseline-tree", os.path.abspath(a.baseline_tree)]
    runs = [
        ("mlp_single", [py, "bench_mlp.py", "single", *q], {}),
        ("mlp_ddp", [*mpi, py, "bench_mlp.py", "ddp", "--overlap", *q], {}),
        ("allreduce", [*mpi, py, "bench_allreduce.py",
                       *(["--windows", "2", "--max-windows", "3", "--max-bytes", str(4 << 20)] if a.quick else [])], {}),
        ("memory", [py, "bench_memory.py", *(["--steps", "200", "--every", "50"] if a.quick else [])], {}),
        ("compress", [py, "bench_compress.py"], {}),   # digits, 5 short 2-rank trainings (~30 s): accuracy, not time
        # the transformer: writes results/gpt_*.json itself (figures in benchmarks/README.md)
        ("gpt", [py, "bench_gpt.py", "all", *(["--windows", "2", "--max-windows", "3", "--iters", "50"] if a.quick else [])], {}),
        ("gpt_ddp", [*mpi, py, "bench_gpt.py", "ddp", "--no-wait",
                     *(["--windows", "2", "--max-windows", "3"] if a.quick else [])], {}),
        # LeNet-5 (examples/cnn): the per-rank shape of lenet_fashion.yaml, and the MLP benchmark's shape
        ("cnn_single", [py, "bench_cnn.py", "--batch", "64", "--threads", "1", "--steps", "20", *q,
                        "--out", "cnn_single.json"], {}),
        ("cnn_single_b256", [py, "bench_cnn.py", "--batch", "256", "--threads", "2", "--batch-threads", "2", *q,
                             "--out", "cnn_single_b256.json"], {}),
        # ZeRO-1 against the all-reduce (state per rank, step and communication time), the trace's cost
        ("zero", [*mpi, py, "bench_zero.py", *(["--steps", "3", "--windows", "1"] if a.quick else [])], {}),
        ("trace", [py, "bench_trace.py", *(["--steps", "20", "--windows", "2"] if a.quick else [])], {}),
        # what users run: launch.py train against a plain PyTorch script, whole commands
        ("e2e", [py, "bench_e2e.py", "--ranks", "1", str(a.ranks),
                 *(["--rounds", "1", "--set", "train.max_steps=20"] if a.quick else [])], {}),
        # what the trainer adds to the bare step (the e2e config, 1 process), and where
        ("trainer", [py, "bench_trainer.py", *q], {}),
    ]
    pin = openblas_pinned() if a.openblas_variant else None
    if pin:
        print(f"OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']} pins OpenBLAS to its {pin[0]} kernels; "
              f"unset, it would pick {pin[1]}: the MLP benchmarks also run that way, as a variant")
        tag = "openblas_auto"
        runs.insert(2, (f"mlp_single_{tag}", [py, "bench_mlp.py", "single", *q, "--out", f"mlp_single_{tag}.json"],
                        {"OPENBLAS_CORETYPE": None}))
        runs.insert(3, (f"mlp_ddp_{tag}", [*mpi, py, "bench_mlp.py", "ddp", *q, "--out", f"mlp_ddp_{tag}.json"],
                        {"OPENBLAS_CORETYPE": None}))
    if a.only:
        runs = [r for r in runs if r[0] in a.only]
    return runs


def main():
    a = parse()
    if a.quick:      # smoke-test figures never overwrite the real ones
        os.environ["BENCH_RESULTS_DIR"] = common.RESULTS = os.path.join(HERE, "results", "quick")
    failed = []
    if not a.report_only:
        for name, cmd, extra in plan(a):
            print(f"\n=== {name}: {' '.join(os.path.basename(c) if c == sys.executable else c for c in cmd)}"
                  + "".join(f"  [{k}={v if v is not None else '(unset)'}]" for k, v in extra.items()), flush=True)
            if not a.no_wait:
                common.wait_for_idle()
            t0 = time.time()
            rc = subprocess.run(cmd, cwd=HERE, env=_env(extra)).returncode
            print(f"    ({time.time() - t0:.0f} s, exit {rc})", flush=True)
            if rc != 0:
                failed.append(name)
    results = collect(a.label)
    path = common.write_json("results.json", results)
    md = os.path.join(common.RESULTS, "RESULTS.md")
    with open(md, "w") as f:
        f.write(report(results))
    print("\n" + summary(results))
    print(f"-> {os.path.relpath(path)}, {os.path.relpath(md)}")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------- collect / report

def collect(label):
    runs = {}
    for fn in sorted(os.listdir(common.RESULTS)) if os.path.isdir(common.RESULTS) else []:
        # this script's outputs only (results/ is shared with other benchmarks, e.g. bench_gpt.py)
        if fn.endswith(".json") and (fn.startswith(("mlp_", "cnn_")) or fn in ("allreduce.json", "memory.json",
                                                                                 "e2e.json", "compress.json", "zero.json",
                                                                                 "trace.json", "trainer_overhead.json")):
            with open(os.path.join(common.RESULTS, fn)) as f:
                runs[fn[:-5]] = json.load(f)
        elif fn in ("gpt_throughput.json", "gpt_ddp.json"):     # bench_gpt.py's: {"args", "result"}
            with open(os.path.join(common.RESULTS, fn)) as f:
                runs[fn[:-5]] = json.load(f)["result"]
    order = ["e2e", "trainer_overhead", "mlp_single", "mlp_single_openblas_auto", "mlp_ddp", "mlp_ddp_openblas_auto", "gpt_throughput",
             "gpt_ddp", "cnn_single", "cnn_single_b256", "allreduce", "compress", "zero", "trace", "memory"]
    runs = dict(sorted(runs.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0])))
    env = next((r["env"] for k, r in runs.items() if k == "mlp_single"), None) or \
        next((r["env"] for r in runs.values()), {})
    return {"label": label, "generated": time.strftime("%Y-%m-%d %H:%M:%S %z"), "env": env, "runs": runs}


def _mlp_rows(r):
    rows = []
    for name, s in r["sides"].items():
        st = s["steps_per_s"]
        rows.append(f"| {name} | {st['median']:.1f} | {st['best']:.1f} | {s['samples_per_s']:,.0f} | "
                    f"{s['gflops_per_s']:.0f} | {st['clean_windows']}/{st['windows']} |")
    return rows


def _gpt_account(r):
    """The 1-process GPT step against its matmul-bound ceiling, the NumPy path, numba's compile
    cost, and where the step's time goes (bench_gpt.py throughput)."""
    L = []
    if "vs_gemm_ceiling" not in r:            # a result from before the ceiling side existed
        return L
    S, tgt = r["sides"], r.get("target_ratio", 1.3)
    met = r["ratio"] >= tgt
    L += [f"1 process: fused CPU kernels {r.get('kernels', '?')}. The step's {r['gemm_calls_per_step']} matrix "
          f"products alone (the same shapes, strides and out= buffers, the batched attention products included, "
          f"replayed in the same windows) run at {S['gemm_ceiling']['median']:,.0f} tokens/s: ddp_scratch reaches "
          f"**{r['vs_gemm_ceiling']:.2f}** of that matmul-bound ceiling. Target >= {tgt}x torch: "
          f"**{'met' if met else 'not met'}** ({r['ratio']:.2f}x)."]
    if "vs_numpy_path" in r:
        L[-1] += (f" The same step on the NumPy path (kernels: numpy), same run: {S['ddp_scratch_numpy_path']['median']:,.0f}"
                  f" tokens/s, {r['numpy_path_vs_torch']:.2f}x torch; the kernels make the step "
                  f"{r['vs_numpy_path']:.2f}x faster.")
    if "kernels_all_threads_vs_torch" in r:
        L[-1] += (f" The GPT's kernels launch on {r.get('kernel_threads')} numba thread(s) (transformer_kernels.THREADS); "
                  f"on all of the process's threads: {S['ddp_scratch_kernels_all_threads']['median']:,.0f} tokens/s, "
                  f"{r['kernels_all_threads_vs_torch']:.2f}x torch.")
    c = r.get("numba_compile")
    if c and "error" not in c:
        L[-1] += (f" numba's cost: the first step of a new process compiles every kernel in "
                  f"{c['empty_cache']['kernels_s']:.1f} s with an empty NUMBA_CACHE_DIR (a fresh machine) and loads "
                  f"them in {c['cached']['kernels_s']:.1f} s from the filled cache (every later run).")
    L.append("")
    profs = [("kernels", r["profile"])] + ([("NumPy path", r["profile_numpy_path"])] if "profile_numpy_path" in r else [])
    L += ["Where the step's time goes" + ("" if met else " (the target is not met: this is the measured account)")
          + ": median ms per step of each kind of work measured in place, its GEMMs counted apart (every "
          "B.xp.matmul timed), 'other' = the step's time outside the named ops.", "",
          "| part | " + " | ".join(f"{n} ms | share" for n, _ in profs) + " |",
          "|---|" + "---|---|" * len(profs)]
    parts = [p["part"] for p in profs[0][1]["parts"]]
    for part in sorted(parts, key=lambda q: -next(p["ms"] for p in profs[0][1]["parts"] if p["part"] == q)):
        cells = []
        for _, prof in profs:
            ms = next((p["ms"] for p in prof["parts"] if p["part"] == part), 0.0)
            cells.append(f"{ms:.2f} | {100 * ms / prof['total_ms']:.0f} %")
        L.append(f"| {part} | " + " | ".join(cells) + " |")
    L += ["| **step** | " + " | ".join(f"**{prof['total_ms']:.2f}** | 100 %" for _, prof in profs) + " |", ""]
    return L


def summary(res):
    runs, out = res["runs"], []
    out.append(f"{'benchmark':34s} {'ddp_scratch':>14s} {'peer':>14s} {'ratio':>7s} {'target':>7s}")
    for key, r in runs.items():
        if key.startswith("mlp_"):
            s = list(r["sides"].values())
            unit = "steps/s" if r["world_size"] == 1 else "samples/s"
            val = (lambda x: x["steps_per_s"]["median"]) if unit == "steps/s" else (lambda x: x["samples_per_s"])
            peer = f"{val(s[1]):.1f}" if len(s) > 1 else "-"
            ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "-"
            tgt = f">={r['target_ratio']}x" if "target_ratio" in r else ""
            out.append(f"{key + ' (' + unit + ')':34s} {val(s[0]):14.1f} {peer:>14s} {ratio:>7s} {tgt:>7s}")
        elif key.startswith("gpt_"):
            o, p = (s["median"] for s in list(r["sides"].values())[:2])      # ours, the peer
            what = "1 process" if key == "gpt_throughput" else f"{r['world_size']} ranks"
            tgt = f">={r.get('target_ratio', 0.8)}x" if key == "gpt_throughput" else ""
            out.append(f"{'gpt ' + what + ' (tokens/s)':34s} {o:14.0f} {p:14.0f} {r['ratio']:6.2f}x {tgt:>7s}")
        elif key.startswith("cnn_"):
            o, p = (r["sides"][k]["steps_per_s"]["median"] if k in r["sides"] else float("nan")
                    for k in ("ddp_scratch", "torch"))
            what = f"lenet b{r['batch_per_process']} {r['threads_per_process']}t (steps/s)"
            out.append(f"{what:34s} {o:14.1f} {p:14.1f} {r.get('ratio', float('nan')):6.2f}x {'>=0.8x':>7s}")
        elif key == "allreduce":
            m = r["mlp_grads"]
            out.append(f"{'allreduce MLP grads (us)':34s} {m['ddp_scratch_us']:14.0f} {m['mpi4py_us']:14.0f} "
                       f"{m['ratio']:6.3f}x {'<=1.05x':>7s}")
            for k, g in r.get("ring", {}).items():     # ours = the hand-written ring, peer = MPI's Allreduce
                out.append(f"{'ring ' + k + ' vs MPI Allreduce (us)':34s} {g['ddp_scratch_us']:14.0f} "
                           f"{g['mpi4py_us']:14.0f} {g['ratio']:6.3f}x {'':>7s}")
        elif key == "e2e":
            for ranks, pt in r["points"].items():
                tgt = ">=1.1x" if ranks == "1" else ">=1.3x"
                out.append(f"{'launch.py train, ' + ranks + ' rank(s) (wall s)':34s} "
                           f"{statistics.median(x['ddp_scratch']['wall_s'] for x in pt['rounds']):14.2f} "
                           f"{statistics.median(x['torch']['wall_s'] for x in pt['rounds']):14.2f} "
                           f"{pt['ratio_median']:6.2f}x {tgt:>7s}")
        elif key == "trainer_overhead":
            out.append(f"{'trainer step vs bare step (ms)':34s} {r['step_ms']['trainer']:14.2f} "
                       f"{r['step_ms']['bare']:14.2f} {1 + r['overhead']:6.3f}x {'<=1.05x':>7s}")
        elif key == "memory":
            out.append(f"{'memory anon RSS growth, 2nd half MiB':34s} {r['anon_growth_second_half_mib']:14.2f} "
                       f"{'':>14s} {'flat' if r['flat'] else 'GROWS':>7s}")
    return "\n".join(out)


def report(res):
    env, runs = res["env"], res["runs"]
    ob = env.get("openblas", {})
    L = ["# Benchmark results", "",
         f"Generated by `python benchmarks/run_all.py` on {res['generated']}"
         + (f" ({res['label']})" if res.get("label") else "") + " from the JSON files next to this one. "
         "Do not edit by hand: re-run the script.", "",
         "## Machine and versions", "",
         "| | |", "|---|---|",
         f"| CPU | {env.get('cpu')} ({env.get('cores')} cores) |",
         f"| Python | {env.get('python')} |",
         f"| NumPy | {env.get('numpy')} (OpenBLAS {ob.get('config', '?').split(' ')[1] if ob.get('config') else '?'}, "
         f"kernels: {ob.get('corename', '?')}) |",
         f"| BLAS environment | {', '.join(f'{k}={v}' for k, v in sorted(env.get('blas_env', {}).items())) or '-'} |",
         f"| torch | {env.get('torch')} |",
         f"| mpi4py | {env.get('mpi4py')} |",
         f"| MPI | {env.get('mpi')} |",
         f"| load average at start | {', '.join(f'{x:.2f}' for x in env.get('loadavg_at_start', []))} |", "",
         "Rates are medians over timing windows that no other process disturbed (\"clean\": under 8% "
         "of the CPUs used by others, from /proc/stat); where fewer than 3 windows were clean the "
         "median is over all windows and the figure is less trustworthy. \"best\" is the fastest window.", ""]
    if "e2e" in runs:
        L += _e2e_section(runs["e2e"])
    if "trainer_overhead" in runs:
        L += _trainer_section(runs["trainer_overhead"])
    for key, r in runs.items():
        if not key.startswith("mlp_"):
            continue
        var = key.endswith("_openblas_auto")
        title = ("MLP train step, 1 process" if r["world_size"] == 1 else
                 f"MLP data-parallel train step, {r['world_size']} ranks under mpiexec")
        core = r["env"].get("openblas", {}).get("corename", "?")
        L += [f"## {title}" + (f" — variant: OPENBLAS_CORETYPE unset ({core} kernels)" if var else ""), "",
              f"{r['model']}, {r['optimizer']}, batch {r['batch_per_process']} per process, "
              f"{r['threads_per_process']} thread(s) per process, {r['steps_per_window']} steps per window, "
              f"NumPy's OpenBLAS running its {core} kernels; fused elementwise work and optimizer: "
              f"{r.get('kernels', 'numpy')}; run {r['env'].get('date')}.", ""]
        if var:
            base_core = runs.get(key.replace("_openblas_auto", ""), r)["env"].get("openblas", {}).get("corename", "?")
            L += [f"The environment of these runs sets OPENBLAS_CORETYPE, which pins NumPy's OpenBLAS to "
                  f"its {base_core} kernels; here the variable is unset and OpenBLAS picks {core} for this "
                  "CPU itself. Not the headline: it shows what the same code does without the pin. "
                  "torch (MKL) does not read the variable.", ""]
        L += ["| implementation | steps/s | best | samples/s | GFLOP/s | clean windows |", "|---|---|---|---|---|---|"]
        L += _mlp_rows(r)
        if "ratio" in r:
            ok = r["ratio"] >= r["target_ratio"]
            L += ["", f"Ratio ddp_scratch / torch: **{r['ratio']:.2f}x** (target >= {r['target_ratio']}x: "
                  f"{'met' if ok else 'NOT met'}): the median of the per-round ratios over {r['clean_rounds']} "
                  f"clean rounds of adjacent windows (ratio of the medians: {r['ratio_of_medians']:.2f}x)."]
        if "vs_gemm_ceiling" in r:
            L += [f"Against its ceiling: the step runs at **{r['vs_gemm_ceiling']:.2f}** of the rate of its GEMMs "
                  f"alone (the same shapes, layouts and out= buffers, timed in the same windows: the `gemm_ceiling` "
                  f"row, {r['gemm_ceiling_gflops_per_s']:.0f} GFLOP/s counted with the whole step's FLOPs; target "
                  f">= 0.95: {'met' if r['vs_gemm_ceiling'] >= 0.95 else 'NOT met'}). What separates the two "
                  "is the step's other work (bias adds and gradients, ReLU, softmax cross-entropy, the optimizer) "
                  "and the GEMMs' own in-step slowdown; the profile below gives each call's time"
                  + (f", with the NumPy path and the kernels on the other thread count beside it, in the same run "
                     f"(the step's kernels launch on {r.get('kernel_threads', 1)} numba thread(s): nn/jit.py THREADS)."
                     if r.get("profile_variants") else ".")]
            fs = r.get("first_step")
            if fs and "numba_empty_cache" in fs:
                L += [f"The kernels' one-off cost: a fresh process's first train step (which imports numba and "
                      f"compiles every kernel, or loads it from numba's cache) takes "
                      f"{fs['numba_empty_cache']['first_step_s']:.2f} s with an empty cache (the first run on a "
                      f"machine), {fs['numba_cached']['first_step_s']:.2f} s with the cache filled (every later "
                      f"run), {fs['numpy']['first_step_s']:.2f} s with kernels: numpy; its second step "
                      f"{fs['numba_cached']['second_step_s']:.3f} s and {fs['numpy']['second_step_s']:.3f} s."]
        if "overlap_vs_blocking" in r:
            L += [f"ddp_scratch with comm.overlap=true (bucketed Iallreduce during backward, 25 MiB buckets, "
                  f"the first 1 MiB: the `ddp_scratch_overlap` row) runs at **{r['overlap_vs_blocking']:.3f}x** "
                  "the blocking all-reduce's speed (median of paired windows)."]
            w = r.get("comm_wait_ms_per_step")
            if w:
                L += [f"Waiting for gradients after backward (slowest rank, mean per step): {w['ddp_scratch']:.2f} ms "
                      f"blocking, {w['ddp_scratch_overlap']:.2f} ms overlapped ({100 * r['comm_wait_removed_fraction']:.0f}% "
                      f"less), but the step time saved is **{100 * r['comm_hidden_fraction']:.0f}% of the blocking "
                      "all-reduce's time (net communication hidden)**: the wait shrinks because MPICH does the "
                      "all-reduce's copying inside the progress pokes during backward, on the same core, so the "
                      "work moves rather than overlaps. Overlap pays only where the all-reduce "
                      "progresses while backward computes: a spare core or an MPI progress thread, a GPU "
                      "computing while the host or NCCL communicates; on these 2 cores every core computes and "
                      "MPICH advances a non-blocking all-reduce only inside MPI calls, so comm.overlap stays off "
                      "by default."]
        if "vs_baseline" in r:
            L += [f"Same windows, ddp_scratch from `{r['baseline_tree']}` (the `{'ddp_scratch@baseline'}` row): "
                  f"this tree is **{r['vs_baseline']:.3f}x** its speed (median of paired windows)."]
        c = r.get("check", {})
        if c:
            L += [f"Same start: first loss {c['first_loss_ddp_scratch']:.6f} (ddp_scratch) vs "
                  f"{c['first_loss_torch']:.6f} (torch); after the timed steps the parameters differ by at "
                  f"most {c.get('param_max_abs_diff_after', float('nan')):.1e} (float32 rounding)."]
        L.append("")
        if "profile" in r and not var:
            cols = [(r.get("kernels", "as run"), r["profile"], r.get("profile_foreign_cpu_share", float("nan")))]
            cols += [(k, v["profile"], v["foreign_cpu_share"]) for k, v in r.get("profile_variants", {}).items()]
            L += ["ddp_scratch step, median milliseconds per call (measured in place, in step order; the share "
                  "of the CPUs other processes used meanwhile under each column's heading):", "",
                  "| call | " + " | ".join(f"{c[0]} ({100 * c[2]:.0f}%)" for c in cols) + " |",
                  "|---|" + "---|" * len(cols)]
            L += [f"| {p['call']} | " + " | ".join(f"{c[1][i]['ms']:.3f}" for c in cols) + " |"
                  for i, p in enumerate(r["profile"])]
            L += ["| **sum** | " + " | ".join(f"**{sum(p['ms'] for p in c[1]):.3f}**" for c in cols) + " |", ""]
    gpt = [(k, runs[k]) for k in ("gpt_throughput", "gpt_ddp") if k in runs]
    if gpt:
        L += ["## Transformer train step, 1 process and data-parallel", "",
              "GPT 4 layers, 4 heads, d_model 128, context 64, vocabulary 65, float32, AdamW (decay on "
              "matrices), clip at norm 1; torch is nanoGPT's model (scaled_dot_product_attention) holding "
              "the same initial weights, on the same batches (bench_gpt.py).", "",
              "| run | ddp_scratch tokens/s | torch tokens/s | ratio | target | clean rounds | first loss ours / torch |",
              "|---|---|---|---|---|---|---|"]
        for k, r in gpt:
            (on, o), (pn, p) = list(r["sides"].items())[:2]          # ours, the peer
            shape = ("1 process, batch 32, 2 threads vs torch eager" if k == "gpt_throughput" else
                     f"{r['world_size']} ranks, batch {r['batch_per_rank']} per rank, {r['threads_per_rank']} "
                     "thread per rank, vs torch DDP (gloo)")
            c = r["check"]
            L.append(f"| {shape} | {o['median']:,.0f} | {p['median']:,.0f} | **{r['ratio']:.2f}x** | "
                     f"{'>= ' + str(r.get('target_ratio', 0.8)) + 'x' if k == 'gpt_throughput' else '(none set)'} | "
                     f"{r['clean_rounds']} | "
                     f"{c['first_loss_ddp_scratch']:.6f} / {c['first_loss_torch']:.6f} |")
        L += ["", "Ratios are medians of per-round ratios of adjacent windows. Peak memory and the nanoGPT "
              "loss anchor: `results/gpt_memory.json`, `results/gpt_anchor.json` (benchmarks/README.md).", ""]
        if "gpt_throughput" in runs:
            L += _gpt_account(runs["gpt_throughput"])
    cnn = [(k, runs[k]) for k in runs if k.startswith("cnn_")]
    if cnn:
        L += _cnn_section(cnn)
    if "allreduce" in runs:
        r = runs["allreduce"]
        m = r["mlp_grads"]
        L += [f"## All-reduce, {r['world_size']} ranks", "",
              f"In-place float32 SUM. MLP gradient buffer ({m['elements']:,} floats, "
              f"{m['bytes'] / 2**20:.2f} MiB): Comm.all_reduce_gradients **{m['ddp_scratch_us']:.0f} us** vs "
              f"raw mpi4py Allreduce on the same buffer **{m['mpi4py_us']:.0f} us**, ratio **{m['ratio']:.3f}** "
              f"(target <= {r['target_ratio_max']}: {'met' if m['ratio'] <= r['target_ratio_max'] else 'NOT met'}; "
              f"median of per-round ratios, {m['clean_windows']}/{m['rounds']} rounds clean). The absolute time "
              "moves between runs with the machine's state, e.g. how much of the buffer the kernel backs with "
              "transparent huge pages (measured on a quiet moment of this VM: ~480 us with, ~940 us without) "
              "and neighbours on the memory bus; the ratio of the two sides, timed on the same buffer in "
              "adjacent windows, does not.", "",
              "| bytes | ddp_scratch us | mpi4py us | ratio | bus bandwidth GB/s (mpi4py) | clean rounds |",
              "|---|---|---|---|---|---|"]
        L += [f"| {common.human_bytes(s['bytes'])} | {s['ddp_scratch_us']:.1f} | {s['mpi4py_us']:.1f} | {s['ratio']:.3f} | "
              f"{s['mpi4py_busbw_GBps']:.2f} | {s['clean_windows']}/{s['rounds']} |" for s in r["sweep"]]
        L.append("")
        if r.get("ring"):
            L += ["The hand-written ring (`comm.algorithm: ring`, `ddp_scratch/parallel/ring.py`) on the same "
                  "buffer against MPI's Allreduce, in paired windows; 16-bit variants (`comm.compress`) send half "
                  "the bytes but pay for the conversions, which on one host's shared memory cost more than the "
                  "bytes they save.", "",
                  "| ring | ring us | MPI Allreduce us | ratio ring/MPI | bytes sent per rank and call | clean rounds |",
                  "|---|---|---|---|---|---|"]
            L += [f"| {k} | {g['ddp_scratch_us']:.0f} | {g['mpi4py_us']:.0f} | {g['ratio']:.3f} | "
                  f"{common.human_bytes(g['bytes_sent_per_call'])} | {g['clean_windows']}/{g['rounds']} |"
                  for k, g in r["ring"].items()]
            L.append("")
    if "compress" in runs:
        rows = runs["compress"]["rows"]
        L += ["## 16-bit gradients (comm.compress), 2 ranks", "",
              "The same training from the same seed, uncompressed and with the ring's 16-bit variants "
              "(`benchmarks/bench_compress.py`; one seed each, so small differences are noise).", "",
              "| task | variant | headline metric | final train loss | val loss | bytes sent per step and rank |",
              "|---|---|---|---|---|---|"]
        L += [f"| {r['task']} | {r['variant']} | {r['metric']} {r['value']:.4f} | {r['train_loss']:.5f} | "
              f"{r['val_loss']:.5f} | {r['comm_bytes_per_step']:,.0f} |" for r in rows]
        L.append("")
    if "zero" in runs:
        r, z = runs["zero"], runs["zero"]["sides"]
        L += [f"## ZeRO-1 (`optim.zero: 1`), {r['world_size']} ranks", "",
              f"{r['model']} ({r['n_params']:,} float32 parameters), AdamW, global batch {r['global_batch']}, "
              f"`Trainer.train_step` in {r['windows']} alternating windows of {r['steps_per_window']} steps "
              "(benchmarks/bench_zero.py).", "",
              "| | optimizer state per rank (largest) | step ms (median) | of it communication ms |", "|---|---|---|---|"]
        for k, name in (("0", "zero 0: all-reduce"), ("1", "zero 1: reduce-scatter, update a slice, all-gather")):
            L.append(f"| {name} | {z[k]['optim_state_bytes_per_rank']:,} B | {z[k]['step_ms']:.2f} | {z[k]['comm_ms']:.2f} |")
        L += ["", f"State per rank: **{z['1']['optim_state_bytes_per_rank'] / z['0']['optim_state_bytes_per_rank']:.3f}** "
              f"of the unsharded (1/N = {1 / r['world_size']:.3f}).", ""]
    if "trace" in runs:
        r = runs["trace"]
        L += ["## What `logging.trace: true` costs", "",
              f"{r['model']}, batch {r['batch']}, one process, {r['windows']} alternating windows of "
              f"{r['steps_per_window']} steps (benchmarks/bench_trace.py): {r['off_us_per_step']:.1f} us/step off, "
              f"{r['on_us_per_step']:.1f} us/step on ({r['on_us_per_step'] / r['off_us_per_step'] - 1:+.1%}); "
              f"{r['events_per_step']:.0f} events per step at {r['one_event_us']:.2f} us each measured alone "
              f"({r['events_per_step'] * r['one_event_us']:.1f} us per step). Off, a phase costs one `is None` test.", ""]
    if "memory" in runs:
        r = runs["memory"]
        L += [f"## Memory over {r['steps']} train steps (1 process, batch {r['batch']}, after "
              f"{r.get('warmup', 0)} warm-up steps)", "",
              "| step | RSS MiB | anonymous MiB | file-backed MiB |", "|---|---|---|---|"]
        L += [f"| {s['step']} | {s['rss_mib']:.2f} | {s['anon_mib']:.2f} | {s['file_mib']:.2f} |" for s in r["samples"]]
        L += ["", f"RSS growth {r['rss_growth_mib']:+.2f} MiB over the run ({r['rss_growth_second_half_mib']:+.2f} MiB "
              f"over its second half); anonymous memory, where a leak would show, {r['anon_growth_mib']:+.2f} MiB "
              f"({r['anon_growth_second_half_mib']:+.2f} MiB); live bytes under tracemalloc over {r['traced_steps']} more steps "
              f"{r['traced_growth_mib'] * 1024:+.1f} KiB; largest transient allocation inside one step "
              f"{r['max_transient_per_step_kib']:.0f} KiB (model state: params, grads, momentum, scratch = "
              f"{r['model_state_mib']:.1f} MiB): **{'no growth' if r['flat'] else 'GROWS'}** (criterion: "
              f"anonymous growth over the second half <= {r['tolerance_mib']:g} MiB, live bytes < 64 KiB; "
              "see bench_memory.py on allocator settling).", ""]
    return "\n".join(L) + "\n"


def _e2e_section(r):
    L = ["## End to end: `launch.py train` against a plain PyTorch script", "",
         f"The whole command, as a user runs it, on `{r['config']}`"
         + (f" with {' '.join('--set ' + o for o in r['overrides'])}" if r["overrides"] else "")
         + ": start-up, reading the IDX files, training, a validation pass per epoch, the test split, "
         "checkpoint and summary. The peer is benchmarks/torch_train.py, the same work written as a student "
         "would in PyTorch (same data and split, optimizer, schedule, batch, evaluation cadence and threads; "
         "DDP over gloo under the same mpiexec). Rounds alternate which side runs first; the ratio is torch's "
         "time / ours (> 1: ddp_scratch is faster), median over rounds.", "",
         "| ranks | steps | ddp_scratch s (median) | torch s (median) | ratio, whole command | ratio, training steps | "
         "test accuracy ours / torch | target |", "|---|---|---|---|---|---|---|---|"]
    for ranks, pt in r["points"].items():
        med = {side: statistics.median(x[side]["wall_s"] for x in pt["rounds"]) for side in ("ddp_scratch", "torch")}
        acc = pt["rounds"][-1]
        tgt = 1.1 if ranks == "1" else 1.3
        L.append(f"| {ranks} | {pt['steps']} | {med['ddp_scratch']:.2f} | {med['torch']:.2f} | "
                 f"**{pt['ratio_median']:.2f}x** | {pt['train_ratio_median']:.2f}x | "
                 f"{acc['ddp_scratch']['test_accuracy']:.4f} / {acc['torch']['test_accuracy']:.4f} | "
                 f">= {tgt}x: {'met' if pt['ratio_median'] >= tgt else 'NOT met'} |")
    return L + [""]


def _trainer_section(r):
    p, ms = r["profile_ms"], r["step_ms"]
    L = ["## What the trainer adds to the step", "",
         f"`Trainer.train_step` as `launch.py train` times it (its summary's wall_s: gathering the step's rows, "
         f"the statistic slots, the all-reduce call, the non-finite check, the schedule) against the bare step "
         f"(zero_grad, forward and loss, backward, finish_grads, the optimizer) on the same model and buffers: "
         f"{r['model']}, {r['optimizer']}, batch {r['batch']}, {r['threads']} thread(s), `{r['config']}`, "
         f"{r['rounds']} alternating rounds of {r['steps_per_window']} steps ({r['clean_rounds']} undisturbed; "
         f"median over {r['median_over']}; {r['clock']} clock; benchmarks/bench_trainer.py).", "",
         f"Overhead **{100 * r['overhead']:+.1f}%** (trainer {ms['trainer']:.2f} ms against bare {ms['bare']:.2f} ms "
         f"per step, median of per-round ratios; target <= {100 * r['target_overhead_max']:.0f}%: "
         f"{'met' if r['overhead'] <= r['target_overhead_max'] else 'NOT met'}); in place, from the phases only the "
         f"trainer has: {r['extra_ms_in_place']:.3f} ms per step = {100 * r['overhead_in_place']:+.1f}%."
         + (f" The `{r['baseline_tree']}` tree's trainer in the same windows: {100 * r['baseline_overhead']:+.1f}%."
            if "baseline_overhead" in r else "")
         + (f" torch_train.py's step on the same batch from the same weights (first loss "
            f"{r['check']['first_loss_ddp_scratch']:.6f} ours, {r['check']['first_loss_torch']:.6f} torch): "
            f"the bare step runs at {r['bare_vs_torch']:.3f}x its speed, the trainer's at {r['trainer_vs_torch']:.3f}x."
            if "check" in r else ""), "",
         "Milliseconds per step of each phase, measured in place (median of steps):", "",
         "| phase | " + " | ".join(p) + " |", "|---|" + "---|" * len(p)]
    L += ["| " + k + " | " + " | ".join(f"{q[k]:.3f}" if k in q else "-" for q in p.values()) + " |" for k in p["trainer"]]
    L += ["", "The trainer's own work, each part timed alone right after a backward (ms): "
          + ", ".join(f"{k} {v:.4f}" for k, v in r["own_work_ms"].items()) + ".", ""]
    return L


def _cnn_section(cnn):
    L = ["## LeNet-5 train step, 1 process", "",
         "examples/cnn/lenet.py (a plug-in model: conv 5x5x6 pad 2, ReLU, max pool 2, conv 5x5x16, ReLU, max pool 2, "
         "400-120-84-10), float32, AdamW; torch eager is nn.Sequential of the same layers (oneDNN convolutions) with "
         "torch.optim.AdamW, holding the same initial weights, on the same batch (bench_cnn.py). Batch 64 with 1 "
         "thread is the per-rank step of `lenet_fashion.yaml` on 2 ranks.", "",
         "| batch, threads | ddp_scratch steps/s | torch steps/s | ratio | target | clean rounds | first loss ours / torch |",
         "|---|---|---|---|---|---|---|"]
    for _, r in cnn:
        o, p = r["sides"]["ddp_scratch"], r["sides"]["torch"]
        c = r.get("check", {})
        L.append(f"| {r['batch_per_process']}, {r['threads_per_process']} | {o['steps_per_s']['median']:.1f} | "
                 f"{p['steps_per_s']['median']:.1f} | **{r['ratio']:.2f}x** | >= {r['target_ratio']}x | "
                 f"{r['clean_rounds']} | {c.get('first_loss_ddp_scratch', float('nan')):.6f} / "
                 f"{c.get('first_loss_torch', float('nan')):.6f} |")
    L += ["", "Only the GEMMs of ddp_scratch's step use more than one thread (OpenBLAS); im2col, col2im, pooling "
          "and ReLU are NumPy copies and elementwise operations on one thread (splitting them over the batch on the "
          "same threads, nn/batch_threads.py, is off by default: bench_cnn.py --batch-threads 2 measures it), while "
          "torch's oneDNN convolutions and its pooling use every thread: more threads help torch's step more than "
          "ours.",
          "", "Where ddp_scratch's step goes (median ms per call measured in place; each layer call split into "
          "its GEMMs, timed through a proxy of B.xp.matmul, and the rest), and torch's by operator (torch.profiler, "
          "self CPU time per step):", ""]
    for _, r in cnn:
        total = sum(p["ms"] for p in r["profile"])
        L += [f"Batch {r['batch_per_process']}, {r['threads_per_process']} thread(s): ddp_scratch {total:.2f} ms "
              "per step in the profile.", "", "| part | ms | share |", "|---|---|---|"]
        L += [f"| {k} | {v:.3f} | {100 * v / total:.0f} % |" for k, v in r["breakdown_ms"].items()]
        if r.get("torch_profile"):
            L += ["", "| torch operator | ms |", "|---|---|"]
            L += [f"| {p['op']} | {p['ms']:.3f} |" for p in r["torch_profile"][:6]]
        L.append("")
    return L


if __name__ == "__main__":
    sys.exit(main())
