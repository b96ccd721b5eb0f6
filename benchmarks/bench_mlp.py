"""MLP 784-1024-1024-10 (ReLU, float32) train step: ddp_scratch against PyTorch eager, same run.

  python benchmarks/bench_mlp.py single                      # 1 process, batch 256, 2 threads
  mpiexec -n 2 python benchmarks/bench_mlp.py ddp            # 2 ranks, batch 128 per rank, 1 thread
                                                             #   ddp_scratch + Comm vs torch DDP (gloo)
  options: --overlap (ddp: also comm.overlap=true), --baseline-tree DIR (another checkout's
           ddp_scratch as a third side, for before/after), --no-torch,
           --kernels auto|numba|numpy (nn/jit.py: the fused numba kernels or the NumPy path),
           --kernel-threads N (numba's threads; default --threads)
  python benchmarks/bench_mlp.py first-step --kernels numba  # one process's import, build and
                                                             #   first step (the compile cost; the
                                                             #   single mode runs it 3 ways itself)

Both sides start from the same weights (ddp_scratch's init copied into torch), train on the same
synthetic batch every step (data loading is not measured) with SGD momentum, and are timed in
alternating windows so that a noisy neighbour hurts both alike. The ddp_scratch step is the one
Trainer.train_step makes: zero_grad, loss, backward, finish_grads, [all-reduce], optimizer step.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (sets up sys.path; must precede numpy/torch for the thread settings)

DIMS = (784, 1024, 1024, 10)
LR, MOMENTUM = 0.01, 0.9
IDLE_S = 0.3        # pause before each timing window (see interleaved)


def parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["single", "ddp", "first-step"])
    ap.add_argument("--batch", type=int, help="rows per process (default 256 single, 128 ddp)")
    ap.add_argument("--threads", type=int, help="math threads per process (default 2 single, 1 ddp)")
    ap.add_argument("--steps", type=int, default=30, help="steps per timing window (~0.4 s: long enough "
                    "for /proc/stat to tell a disturbed window from a clean one)")
    ap.add_argument("--windows", type=int, default=7,
                    help="clean timing windows wanted per side (median reported); more run while other "
                         "processes disturb them, up to --max-windows")
    ap.add_argument("--max-windows", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps per side before timing")
    ap.add_argument("--no-torch", action="store_true", help="time ddp_scratch only")
    ap.add_argument("--overlap", action="store_true",
                    help="ddp mode: also time ddp_scratch with comm.overlap (bucketed Iallreduce during backward)")
    ap.add_argument("--baseline-tree", metavar="DIR",
                    help="another checkout whose ddp_scratch/ runs as a third side in the same windows "
                         "(before/after comparisons immune to the machine's mood)")
    ap.add_argument("--kernels", choices=["auto", "numba", "numpy"], default="auto",
                    help="the config's kernels: fused numba kernels (auto: for arrays of 32K+ elements) or NumPy")
    ap.add_argument("--kernel-threads", type=int, help="numba threads per process (default: --threads)")
    ap.add_argument("--no-compile-cost", action="store_true",
                    help="single mode: skip timing a fresh process's first step (cold and cached numba cache)")
    ap.add_argument("--out", help="JSON file name under benchmarks/results/ (default mlp_<mode>.json)")
    a = ap.parse_args()
    a.batch = a.batch or (256 if a.mode == "single" else 128)
    a.threads = a.threads or (2 if a.mode == "single" else 1)
    a.kernel_threads = a.kernel_threads or 1     # the package's jit.THREADS (see there why 1)
    a.out = a.out or f"mlp_{a.mode}.json"
    return a


# ----------------------------------------------------------------------------- the two sides

def _module(pkg, *names):
    """The first of `names` that `pkg` has (a baseline tree may predate the package's rooms)."""
    import importlib
    for name in names:
        try:
            return importlib.import_module(f"{pkg}.{name}")
        except ModuleNotFoundError:
            if name == names[-1]:
                raise


def build_scratch(pkg="ddp_scratch"):
    MLP = _module(pkg, "nn.mlp", "models").MLP
    SGD = _module(pkg, "nn.optim", "optim").SGD
    model = MLP(DIMS[0], DIMS[-1], list(DIMS[1:-1]), "relu", dtype="float32", seed=0)
    return model, SGD(model.space, LR, momentum=MOMENTUM)


BASELINE = "ddp_scratch@baseline"
GEMMS = "gemm_ceiling"      # the step's GEMMs alone (single mode): the sgemm-bound ceiling


def load_baseline_tree(path):
    """Import DIR/ddp_scratch as the package `ddp_scratch_baseline` (its imports are relative)."""
    import importlib.util
    pkg = os.path.join(os.path.abspath(path), "ddp_scratch")
    spec = importlib.util.spec_from_file_location("ddp_scratch_baseline", os.path.join(pkg, "__init__.py"),
                                                  submodule_search_locations=[pkg])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["ddp_scratch_baseline"] = mod
    spec.loader.exec_module(mod)
    return "ddp_scratch_baseline"


def scratch_step_fn(model, opt, x, t, scale, comm=None, overlap=None, waited=None):
    """Trainer.train_step's calls: blocking all-reduce after backward, or with `overlap` (a
    Comm.overlapped object) the bucketed all-reduce issued during backward (comm.overlap=true).
    `waited` (a list [seconds, steps]) collects the time spent waiting for communication after
    backward: all of it when blocking, only the part not hidden behind backward when overlapped."""
    space = model.space

    def step():
        space.zero_grad()
        if overlap is not None:
            overlap.begin()
        loss, _ = model.loss(x, t, scale)
        model.backward()
        space.finish_grads()
        t0 = time.perf_counter()
        count = overlap is None or overlap.expected is not None   # not the first, blocking one
        if overlap is not None:
            comm.all_reduce_overlapped_finish(overlap)
        elif comm is not None:
            comm.all_reduce_gradients(space.grads_full)
        if waited is not None and count:
            waited[0] += time.perf_counter() - t0
            waited[1] += 1
        opt.step()
        return loss
    return step


def build_torch(model):
    """nn.Sequential with ddp_scratch's initial weights (W is (D_in, D_out) there, (out, in) here)."""
    import torch
    layers = []
    for i, (a, b) in enumerate(zip(DIMS[:-1], DIMS[1:])):
        layers += [torch.nn.Linear(a, b)] + ([torch.nn.ReLU()] if i < len(DIMS) - 2 else [])
    net = torch.nn.Sequential(*layers)
    named = model.space.named()
    with torch.no_grad():
        for i, lin in enumerate(m for m in net if isinstance(m, torch.nn.Linear)):
            lin.weight.copy_(torch.from_numpy(named[f"fc{i}.W"].data.T.copy()))
            lin.bias.copy_(torch.from_numpy(named[f"fc{i}.b"].data.copy()))
    return net


def torch_step_fn(net, params, x, t):
    import torch
    opt = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss = loss_fn(net(x), t)
        loss.backward()
        opt.step()
        return float(loss.detach())
    return step


def torch_params_flat(net):
    import numpy as np
    lins = [m for m in net.modules() if hasattr(m, "weight")]
    return np.concatenate([p for lin in lins for p in (lin.weight.detach().numpy().T.ravel(),
                                                        lin.bias.detach().numpy())])


def gemm_step_fn(model, x):
    """The step's GEMMs alone, with the shapes, layouts and out= buffers that ops.linear_forward /
    linear_backward use: x W per layer forward; x^T dy into dW and dy W^T into dx (not for the
    first layer, whose input needs no gradient) backward. Its rate is the step's sgemm-bound
    ceiling: what the step would reach if everything but its matrix products took no time."""
    import numpy as np
    Ws = [layer.W.data for layer in model.layers if hasattr(layer, "W")]
    n = x.shape[0]
    hs = [x] + [np.ones((n, W.shape[1]), dtype=x.dtype) for W in Ws]       # layer inputs and outputs
    dWs = [np.empty_like(W) for W in Ws]
    dxs = [np.empty((n, W.shape[0]), dtype=x.dtype) for W in Ws]

    def step():
        for i, W in enumerate(Ws):
            np.matmul(hs[i], W, out=hs[i + 1])
        dy = hs[-1]
        for i in reversed(range(len(Ws))):
            np.matmul(hs[i].T, dy, out=dWs[i])
            if i > 0:
                dy = np.matmul(dy, Ws[i].T, out=dxs[i])
        return 0.0
    return step


# ----------------------------------------------------------------------------- profile

def profile_scratch(model, opt, x, t, scale, reps=30, tries=6):
    """Median milliseconds of each call in one step, measured in place (the step's real order).

    Repeated up to `tries` times while other processes disturb it; the least disturbed attempt
    is kept, with the share of the CPUs others used during it."""
    best = None
    for _ in range(tries):
        time.sleep(IDLE_S)
        c0, p0 = common.cpu_snapshot(), time.process_time()
        prof = _profile_once(model, opt, x, t, scale, reps)
        share = common.foreign_share(c0, common.cpu_snapshot(), time.process_time() - p0)
        if best is None or share < best[1]:
            best = (prof, share)
        if share < common.CLEAN:
            break
    return best


def _profile_once(model, opt, x, t, scale, reps):
    import numpy as np
    from ddp_scratch.nn import ops
    names, rows = [], []
    probs = np.empty((x.shape[0], DIMS[-1]), dtype=x.dtype)     # MLP.loss's softmax workspace
    for r in range(reps + 3):
        times = []

        def T(name, f, *a):
            t0 = time.perf_counter()
            out = f(*a)
            times.append((name, time.perf_counter() - t0))
            return out
        model.space.zero_grad()
        h = x
        for i, layer in enumerate(model.layers):
            h = T(f"fwd {i} {_layer_name(layer)}", layer.forward, h)
        _, _, p = T("fwd softmax-xent", ops.softmax_xent_forward, h, t, scale, probs)
        d = T("bwd softmax-xent", ops.softmax_xent_backward, p, t, scale)
        for i in reversed(range(len(model.layers))):
            d = T(f"bwd {i} {_layer_name(model.layers[i])}", model.layers[i].backward, d)
        T("finish_grads", model.space.finish_grads)
        T("optimizer step", opt.step)
        if r >= 3:
            names = [n for n, _ in times]
            rows.append([s for _, s in times])
    med = np.median(np.array(rows), axis=0) * 1e3
    return [{"call": n, "ms": float(m)} for n, m in zip(names, med)]


def profiles(model, opt, x, t, scale, kernel_threads, threads):
    """The per-call profile as configured, and, where kernels run, in the same run with the NumPy
    path (before/after) and with the kernels on one thread (a 2-thread kernel right after a GEMM
    shares its second core with OpenBLAS's spinning worker). {label: (profile, foreign share)}."""
    from ddp_scratch.nn import jit
    out = {"as configured": profile_scratch(model, opt, x, t, scale)}
    if jit.describe() == "numpy":
        return out
    setting = jit.setting()
    jit.use("numpy")
    try:
        out["numpy path"] = profile_scratch(model, opt, x, t, scale)
    finally:
        jit.use(setting)
    other = 1 if kernel_threads > 1 else threads      # the other choice of jit.THREADS, as a column
    if other != kernel_threads:
        jit.limit_threads(other)
        try:
            out[f"kernels on {other} thread{'s' if other > 1 else ''}"] = profile_scratch(model, opt, x, t, scale)
        finally:
            jit.limit_threads(kernel_threads)
    return out


FIRST_STEP = "first-step"


def first_step(a):
    """Seconds a fresh process spends importing and building the model, on its first step (numba
    imported and every kernel compiled, or loaded from its cache, here) and on its second."""
    import json
    import numpy as np
    t0 = time.perf_counter()
    model, opt = build_scratch()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((a.batch, DIMS[0]), dtype=np.float32)
    step = scratch_step_fn(model, opt, x, rng.integers(0, DIMS[-1], a.batch), 1.0 / a.batch)
    t1 = time.perf_counter()
    step()
    t2 = time.perf_counter()
    step()
    t3 = time.perf_counter()
    print(json.dumps({"build_s": t1 - t0, "first_step_s": t2 - t1, "second_step_s": t3 - t2}))


def compile_cost(a):
    """The numba kernels' one-off cost, from fresh processes: the first step with kernels: numpy,
    with numba and an empty cache (NUMBA_CACHE_DIR: every kernel compiled), and again with that
    cache filled (every kernel loaded)."""
    import json
    import subprocess
    import tempfile
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        for label, kernels in (("numpy", "numpy"), ("numba_empty_cache", a.kernels), ("numba_cached", a.kernels)):
            env = dict(os.environ, NUMBA_CACHE_DIR=cache)
            cmd = [sys.executable, os.path.abspath(__file__), FIRST_STEP, "--kernels", kernels,
                   "--batch", str(a.batch), "--threads", str(a.threads), "--kernel-threads", str(a.kernel_threads)]
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            if p.returncode != 0:
                raise SystemExit(f"bench_mlp: the first-step run failed:\n{p.stderr}")
            out[label] = json.loads(p.stdout.strip().splitlines()[-1])
    return out


def _layer_name(layer):
    if hasattr(layer, "W"):
        return f"Linear {layer.W.shape[0]}x{layer.W.shape[1]}" + ("" if layer.need_dx else " (no dx)")
    return type(layer).__name__ + f" {getattr(layer, 'kind', '')}"


# ----------------------------------------------------------------------------- runs

def interleaved(sides, steps, want_clean, max_windows, warmup, sync=None, total_cpu=None, reduce_max=None):
    """Time the sides in alternating windows until `want_clean` rounds (one window per side) ran
    undisturbed by other processes, or `max_windows` rounds ran. Returns a list of rounds, each
    {name: (seconds, foreign CPU share)}; in MPI runs both figures are the maximum over ranks, so
    every rank takes the same decisions."""
    for name, step in sides:
        common.time_windows(step, 0, 0, warmup, sync)
    rounds = []
    for w in range(max_windows):
        rnd = {}
        for name, step in (sides if w % 2 == 0 else sides[::-1]):
            # The other side's worker threads busy-wait a while after their last job (OpenBLAS's
            # for ~0.1 s) and would steal a core from this window: let them go to sleep first.
            time.sleep(IDLE_S)
            step()          # one untimed step to wake this side's threads
            s, f = common.time_windows(step, steps, 1, 0, sync, total_cpu)[0]
            rnd[name] = (reduce_max(s), reduce_max(f)) if reduce_max else (s, f)
        rounds.append(rnd)
        if sum(all(f < common.CLEAN for _, f in r.values()) for r in rounds) >= want_clean:
            break
    return rounds


def paired_ratio(rounds, a, b):
    """Median over rounds of rate(a) / rate(b), from the clean rounds when there are 3 or more:
    the two windows of a round are adjacent in time, so a slow spell of the machine cancels."""
    clean = [r for r in rounds if all(f < common.CLEAN for _, f in r.values())]
    use = clean if len(clean) >= 3 else rounds
    return statistics.median(r[b][0] / r[a][0] for r in use), len(clean)


def run_single(a):
    import numpy as np
    model, opt = build_scratch()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((a.batch, DIMS[0]), dtype=np.float32)
    t = rng.integers(0, DIMS[-1], a.batch)
    scratch = scratch_step_fn(model, opt, x, t, 1.0 / a.batch)
    sides = [("ddp_scratch", scratch)]
    res = {"check": {}}
    if not a.no_torch:
        import torch
        torch.set_num_threads(a.threads)
        net = build_torch(model)
        tstep = torch_step_fn(net, net.parameters(), torch.from_numpy(x), torch.from_numpy(t))
        l_s, l_t = scratch(), tstep()            # same weights, same batch: same first loss
        res["check"] = {"first_loss_ddp_scratch": l_s, "first_loss_torch": l_t,
                        "rel_diff": abs(l_s - l_t) / abs(l_t)}
        sides.append(("torch", tstep))
    if a.baseline_tree:
        m0, o0 = build_scratch(load_baseline_tree(a.baseline_tree))
        sides.append((BASELINE, scratch_step_fn(m0, o0, x, t, 1.0 / a.batch)))
    sides.append((GEMMS, gemm_step_fn(model, x)))
    times = interleaved(sides, a.steps, a.windows, a.max_windows, a.warmup)
    if not a.no_torch:
        res["check"]["param_max_abs_diff_after"] = float(np.abs(model.space.params - torch_params_flat(net)).max())
    profs = profiles(model, opt, x, t, 1.0 / a.batch, a.kernel_threads, a.threads)
    res["profile"], res["profile_foreign_cpu_share"] = profs.pop("as configured")
    res["profile_variants"] = {k: {"profile": p, "foreign_cpu_share": f} for k, (p, f) in profs.items()}
    if not a.no_compile_cost:
        res["first_step"] = compile_cost(a)
    return res, times, a.batch, model.flops_per_step(a.batch)


def run_ddp(a):
    import numpy as np
    from ddp_scratch.parallel.world import Comm
    comm = Comm()
    MPI, world, rank = comm.MPI, comm.size, comm.rank
    if world < 2:
        raise SystemExit("ddp mode needs at least 2 ranks: mpiexec -n 2 python benchmarks/bench_mlp.py ddp")
    model, opt = build_scratch()
    rng = np.random.default_rng(100 + rank)      # each rank its own shard
    x = rng.standard_normal((a.batch, DIMS[0]), dtype=np.float32)
    t = rng.integers(0, DIMS[-1], a.batch)
    scale = 1.0 / (a.batch * world)              # ddp_scratch: SUM of per-rank sums / global batch
    waited = {"ddp_scratch": [0.0, 0], "ddp_scratch_overlap": [0.0, 0]}
    scratch = scratch_step_fn(model, opt, x, t, scale, comm, waited=waited["ddp_scratch"])
    sides = [("ddp_scratch", scratch)]
    res = {"check": {}}
    net = None
    if not a.no_torch:
        torch = common.torch_ddp_init(comm, a.threads)
        net = build_torch(model)
        ddp = torch.nn.parallel.DistributedDataParallel(net)
        tstep = torch_step_fn(ddp, ddp.parameters(), torch.from_numpy(x), torch.from_numpy(t))
        l_s, l_t = scratch(), tstep()     # scratch's local loss is scaled by 1/global batch
        res["check"] = {"first_loss_ddp_scratch": l_s * world, "first_loss_torch": l_t,
                        "rel_diff": abs(l_s * world - l_t) / abs(l_t)}
        sides.append(("torch_ddp_gloo", tstep))
    if a.overlap:
        m1, o1 = build_scratch()
        ov = comm.overlapped(m1.space, 25.0, 1.0)      # torch DDP's bucket sizes
        sides.append(("ddp_scratch_overlap", scratch_step_fn(m1, o1, x, t, scale, comm, ov,
                                                             waited=waited["ddp_scratch_overlap"])))
    if a.baseline_tree:
        m0, o0 = build_scratch(load_baseline_tree(a.baseline_tree))
        sides.append((BASELINE, scratch_step_fn(m0, o0, x, t, scale, comm)))

    def reduce_max(s):
        return comm.comm.allreduce(s, op=MPI.MAX)

    def total_cpu(s):
        return comm.comm.allreduce(s, op=MPI.SUM)
    times = interleaved(sides, a.steps, a.windows, a.max_windows, a.warmup, sync=comm.comm.Barrier,
                        total_cpu=total_cpu, reduce_max=reduce_max)
    if net is not None:
        res["check"]["param_max_abs_diff_after"] = float(np.abs(model.space.params - torch_params_flat(net)).max())
        import torch.distributed as dist
        dist.destroy_process_group()
    if a.overlap:
        # ms per step waiting for gradients after backward, the slowest rank's; the first
        # overlapped step is a blocking one (it learns the buckets' write counts) and is left out
        ms = {k: 1e3 * comm.comm.allreduce(v[0] / max(v[1], 1), op=MPI.MAX) for k, v in waited.items()}
        res["comm_wait_ms_per_step"] = ms
    res["world_size"] = world
    res["rank"] = rank
    return res, times, a.batch * world, model.flops_per_step(a.batch * world)


def main():
    a = parse()
    common.set_threads(a.threads)
    os.environ["NUMBA_NUM_THREADS"] = str(max(a.threads, a.kernel_threads))
    from ddp_scratch.nn import jit
    jit.THREADS = a.kernel_threads
    jit.use(a.kernels)
    if a.mode == FIRST_STEP:
        return first_step(a)
    res, times, items, flops = run_single(a) if a.mode == "single" else run_ddp(a)
    if res.get("rank", 0) != 0:
        return
    import numpy as np  # noqa: F401  (loaded already; environment() reads its version)
    out = {"benchmark": f"mlp_{a.mode}", "model": "MLP " + "-".join(map(str, DIMS)) + " ReLU float32",
           "optimizer": f"SGD lr={LR} momentum={MOMENTUM}", "batch_per_process": a.batch,
           "threads_per_process": a.threads, "world_size": res.pop("world_size", 1),
           "steps_per_window": a.steps, "warmup_steps": a.warmup, "kernels": jit.describe(),
           "kernel_threads": a.kernel_threads, "env": common.environment(), "sides": {}}
    res.pop("rank", None)
    rounds = times
    names = list(rounds[0])
    for name in names:
        win = [r[name] for r in rounds]
        steps = common.summarize(win, a.steps)
        out["sides"][name] = {"steps_per_s": steps, "samples_per_s": steps["median"] * items,
                              "gflops_per_s": steps["median"] * flops / 1e9, "window_s": [w[0] for w in win]}
    if "ddp_scratch_overlap" in names:
        out["overlap_vs_blocking"], _ = paired_ratio(rounds, "ddp_scratch_overlap", names[0])
        names.remove("ddp_scratch_overlap")
        # Two views of "hidden": the wait after backward that overlap removed, and the step time it
        # saved, as fractions of the blocking all-reduce's time. They differ where the all-reduce's
        # work only moves into backward (MPICH progressing it inside the Testall pokes).
        w = res["comm_wait_ms_per_step"]
        step_ms = 1e3 / out["sides"][names[0]]["steps_per_s"]["median"]
        out["comm_wait_removed_fraction"] = 1.0 - w["ddp_scratch_overlap"] / w["ddp_scratch"]
        out["comm_hidden_fraction"] = step_ms * (1.0 - 1.0 / out["overlap_vs_blocking"]) / w["ddp_scratch"]
    if GEMMS in names:
        # steps/s of the whole step / steps/s of its GEMMs alone, paired windows
        out["vs_gemm_ceiling"], _ = paired_ratio(rounds, names[0], GEMMS)
        out["gemm_ceiling_gflops_per_s"] = out["sides"][GEMMS]["gflops_per_s"]
        names.remove(GEMMS)
    if BASELINE in names:
        out["baseline_tree"] = os.path.abspath(a.baseline_tree)
        out["vs_baseline"], _ = paired_ratio(rounds, names[0], BASELINE)
        names.remove(BASELINE)
    if len(names) == 2:
        out["ratio"], out["clean_rounds"] = paired_ratio(rounds, *names)
        out["ratio_of_medians"] = (out["sides"][names[0]]["steps_per_s"]["median"]
                                   / out["sides"][names[1]]["steps_per_s"]["median"])
        out["target_ratio"] = 1.0 if a.mode == "single" else 1.2
    out.update(res)
    path = common.write_json(a.out, out)
    print(f"MLP {a.mode}: batch {a.batch}/process, {a.threads} thread(s), world {out['world_size']}, "
          f"{len(rounds)} alternating windows x {a.steps} steps per side")
    for name, s in out["sides"].items():
        r = s["steps_per_s"]
        print(f"  {name:16s} {r['median']:8.2f} steps/s  {s['samples_per_s']:9.0f} samples/s  "
              f"{s['gflops_per_s']:6.1f} GFLOP/s  (best {r['best']:.2f}, {r['clean_windows']}/{r['windows']} clean windows)")
    if "ratio" in out:
        print(f"  ratio {names[0]}/{names[1]}: {out['ratio']:.2f}x (median over {out['clean_rounds']} clean "
              f"rounds of paired windows; ratio of medians {out['ratio_of_medians']:.2f}x; "
              f"target >= {out['target_ratio']}x)")
    if "overlap_vs_blocking" in out:
        w = out["comm_wait_ms_per_step"]
        print(f"  ddp_scratch_overlap / ddp_scratch: {out['overlap_vs_blocking']:.3f}x (median of paired windows); "
              f"waiting for gradients after backward: {w['ddp_scratch']:.2f} ms/step blocking, "
              f"{w['ddp_scratch_overlap']:.2f} overlapped ({100 * out['comm_wait_removed_fraction']:.0f}% less); "
              f"step time saved = {100 * out['comm_hidden_fraction']:.0f}% of the blocking all-reduce (net hidden)")
    if "vs_baseline" in out:
        print(f"  ddp_scratch / ddp_scratch@baseline ({out['baseline_tree']}): {out['vs_baseline']:.3f}x "
              "(median of paired windows)")
    if res.get("check"):
        c = res["check"]
        print(f"  check: first loss {c['first_loss_ddp_scratch']:.6f} vs {c['first_loss_torch']:.6f}, "
              f"params after: max |diff| {c.get('param_max_abs_diff_after', float('nan')):.2e}")
    if "profile" in res:
        cols = [("kernels: " + out["kernels"], res["profile"], res["profile_foreign_cpu_share"])]
        cols += [(k, v["profile"], v["foreign_cpu_share"]) for k, v in res["profile_variants"].items()]
        print("  ddp_scratch step profile (median ms per call; share of the CPUs other processes used meanwhile):")
        print(f"    {'':34s}" + "".join(f"{c[0][:26]:>28s}" for c in cols))
        print(f"    {'(other processes)':34s}" + "".join(f"{100 * c[2]:27.0f}%" for c in cols))
        for i, p in enumerate(res["profile"]):
            print(f"    {p['call']:34s}" + "".join(f"{c[1][i]['ms']:28.3f}" for c in cols))
        print(f"    {'sum':34s}" + "".join(f"{sum(q['ms'] for q in c[1]):28.3f}" for c in cols))
    if "first_step" in res:
        fs = res["first_step"]
        print("  a fresh process's first step (import, compile or cache load, run) / second step, seconds: "
              + ", ".join(f"{k} {v['first_step_s']:.2f} / {v['second_step_s']:.3f}" for k, v in fs.items()))
    print(f"  -> {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
