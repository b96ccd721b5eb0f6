"""Trainer overhead: Trainer.train_step against the bare step it wraps, one process.

  python benchmarks/bench_trainer.py [--config benchmarks/e2e_fashion.yaml] [--threads 2]
                                     [--steps 20 --windows 7] [--baseline-tree DIR] [--set k=v ...]

The bare step is what bench_mlp.py times and what torch_train.py's step does: zero_grad, forward
and loss, backward, finish_grads, the optimizer step, on a batch already in place. The trainer's
step is what `launch.py train` counts as training time (summary.json's wall_s): gathering the
step's rows of the epoch's permutation, the statistic slots, the all-reduce call (nothing at one
rank), the checks before the update (non-finite, stop request, clipping), the learning-rate
schedule, under the loop's np.errstate. Both sides drive the SAME Trainer's model and optimizer
(same buffers, same memory placement) in alternating windows, so only the trainer's additions
differ; overhead = median over rounds of (trainer window / bare window) - 1.

The per-phase part times every call of one step in place (the trainer's own methods wrapped in
perf_counter stamps; what the trainer does inline is the residual "trainer's own work") and, to
name that residual, the trainer's candidate extras one by one right after a backward.
--baseline-tree DIR adds another checkout's Trainer as a third side in the same windows (the
before/after comparison this noisy machine allows). Writes results/trainer_overhead.json.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (before numpy: thread settings)

CONFIG = os.path.join(common.HERE, "e2e_fashion.yaml")
BASELINE = "trainer@baseline"


def parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=CONFIG)
    ap.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=2, help="math threads (launch.py train's at 1 process on 2 cores)")
    ap.add_argument("--steps", type=int, default=20, help="steps per timing window")
    ap.add_argument("--windows", type=int, default=7, help="clean rounds wanted (one window per side)")
    ap.add_argument("--max-windows", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--reps", type=int, default=15, help="steps of the in-place per-phase profile")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: windows timed in this process's CPU seconds (with --threads 1, a loaded "
                         "machine's neighbours then hardly move the figures; 2 threads count OpenBLAS's spinning)")
    ap.add_argument("--no-torch", action="store_true", help="leave out torch_train.py's step (the peer)")
    ap.add_argument("--baseline-tree", metavar="DIR", help="another checkout's Trainer as a third side")
    ap.add_argument("--out", default="trainer_overhead.json")
    return ap.parse_args()


def make_trainer(pkg, a):
    import importlib
    load_config = importlib.import_module(f"{pkg}.config").load_config
    Comm = importlib.import_module(f"{pkg}.parallel.world").Comm
    trainer = importlib.import_module(f"{pkg}.run.trainer")
    cfg = load_config(a.config, ["logging.progress=false", *a.overrides])
    tr = trainer.Trainer(cfg, trainer.Options(out=tempfile.mkdtemp(prefix="bench_trainer_"), quiet=True,
                                              signals=False), comm=Comm(serial=True))
    tr.skips, tr.gnorm = 0, 0.0        # what run() sets before its first step
    return tr


def trainer_step_fn(tr):
    """What run() times per step (its train_s): train_step under np.errstate, then synchronize."""
    import numpy as np
    B, state = sys.modules[type(tr).__module__].B, {"i": 0}

    def step():
        i = state["i"] = (state["i"] + 1) % tr.spe
        with np.errstate(over="ignore", invalid="ignore"):
            tr.train_step(0, i)
        B.synchronize()
    return step


def bare_step_fn(tr):
    """The model's own step on the batch already gathered: no trainer."""
    x, y, n = tr.task.batch(0, 0)
    space, model, opt, scale = tr.space, tr.model, tr.opt, 1.0 / n
    lr = tr.cfg.optim.lr

    def step():
        space.zero_grad()
        model.loss(x, y, scale)
        model.backward()
        space.finish_grads()
        opt.step(lr)
    return step


def interleaved(sides, a):
    """Alternating windows (the order flips every round) until a.windows rounds ran undisturbed
    by other processes or a.max_windows ran: [{side: (seconds, foreign CPU share)}]."""
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    for _, step in sides:
        for _ in range(a.warmup):
            step()
    rounds = []
    for w in range(a.max_windows):
        rnd = {}
        for name, step in (sides if w % 2 == 0 else sides[::-1]):
            time.sleep(0.3)          # let the other side's BLAS threads stop spinning
            step()
            c0, p0, t0 = common.cpu_snapshot(), time.process_time(), clock()
            for _ in range(a.steps):
                step()
            dt = clock() - t0
            rnd[name] = (dt, common.foreign_share(c0, common.cpu_snapshot(), time.process_time() - p0))
        rounds.append(rnd)
        if sum(all(f < common.CLEAN for _, f in r.values()) for r in rounds) >= a.windows:
            break
    return rounds


def torch_parts(tr, threads):
    """torch_train.py's step on the same batch from the same weights (the optimizer as configured),
    split like the bare step: the peer of the e2e benchmark's "training steps" ratio. Returns
    (step, {phase: callable}, first loss) or None where the model is not a ReLU MLP."""
    import torch
    import torch.nn.functional as F
    if tr.cfg.model.name != "mlp" or tr.cfg.model.activation != "relu" or tr.cfg.optim.name not in ("adamw", "sgd"):
        return None
    torch.set_num_threads(threads)
    dims, named, layers = tr.model.dims, tr.space.named(), []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        lin = torch.nn.Linear(a, b, dtype=getattr(torch, tr.cfg.train.dtype))
        with torch.no_grad():        # W is (in, out) here, (out, in) in torch
            lin.weight.copy_(torch.from_numpy(named[f"fc{i}.W"].data.T.copy()))
            lin.bias.copy_(torch.from_numpy(named[f"fc{i}.b"].data.copy()))
        layers += [lin] + ([torch.nn.ReLU()] if i < len(dims) - 2 else [])
    net, o = torch.nn.Sequential(*layers), tr.cfg.optim
    if o.name == "adamw":
        opt = torch.optim.AdamW(net.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    x, y, n = tr.task.batch(0, 0)
    x, y = torch.from_numpy(x.copy()), torch.from_numpy(y.copy())
    state = {}

    def forward():       # torch_train.py's loss: the rank's sum over the global batch
        state["loss"] = F.cross_entropy(net(x), y, reduction="sum") * (1.0 / n)

    def zero():
        opt.zero_grad(set_to_none=True)

    def backward():
        state["loss"].backward()

    def step():
        zero()
        forward()
        backward()
        opt.step()
    forward()
    return step, {"zero_grad": zero, "forward + loss": forward, "backward": backward, "optimizer step": opt.step}, \
        float(state["loss"].detach())


# ----------------------------------------------------------------------------- per phase

def _wrap(obj, attr, name, acc, clock):
    f = getattr(obj, attr)

    def timed(*args, **kw):
        t0 = clock()
        try:
            return f(*args, **kw)
        finally:
            acc[name] = acc.get(name, 0.0) + clock() - t0
    setattr(obj, attr, timed)
    return lambda: delattr(obj, attr) if attr in vars(obj) else None


RESIDUAL = "trainer's own work (residual)"
ONLY_TRAINER = ("batch gather", "all-reduce call", RESIDUAL)
PHASES = [("task", "batch", "batch gather"), ("space", "zero_grad", "zero_grad"), ("model", "loss", "forward + loss"),
          ("model", "backward", "backward"), ("space", "finish_grads", "finish_grads"),
          ("comm", "all_reduce_gradients", "all-reduce call"), ("opt", "step", "optimizer step")]


def profile(tr, step, reps, clock):
    """Median milliseconds per step of each phase, in place; the rest of the step is the residual."""
    import numpy as np
    holders = {"task": tr.task, "space": tr.space, "model": tr.model, "comm": tr.comm, "opt": tr.opt}
    rows, names = [], [n for _, _, n in PHASES]
    acc = {}
    undo = [_wrap(holders[h], attr, name, acc, clock) for h, attr, name in PHASES]
    try:
        for r in range(reps + 3):
            acc.clear()
            t0 = clock()
            step()
            total = clock() - t0
            if r >= 3:
                parts = [acc.get(n, 0.0) for n in names]
                rows.append(parts + [total - sum(parts), total])
    finally:
        for u in undo:
            u()
    med = np.median(np.array(rows), axis=0) * 1e3
    return dict(zip(names + [RESIDUAL, "step"], map(float, med)))


def profile_parts(parts, reps, clock):
    """Median milliseconds per step of each of `parts` (callables making one step, in order)."""
    import numpy as np
    rows = []
    for r in range(reps + 3):
        times = []
        for f in parts.values():
            t0 = clock()
            f()
            times.append(clock() - t0)
        if r >= 3:
            rows.append(times + [sum(times)])
    return dict(zip([*parts, "step"], map(float, np.median(np.array(rows), axis=0) * 1e3)))


def own_work(tr, clock, reps=50):
    """The trainer's candidate extras, each timed alone right after a backward (the gradients as
    warm in the caches as in the step): what the residual is made of."""
    import numpy as np
    from ddp_scratch import backend as B
    from ddp_scratch.nn.optim import lr_at
    g, ex = tr.space.grads, tr.space.extras
    cands = {
        "global gradient norm (dot g.g)": lambda: B.xp.dot(g, g),
        "statistic slots read (host copy)": lambda: B.to_numpy(ex).astype(np.float64),
        "learning-rate schedule": lambda: lr_at(tr.cfg.optim, 100, tr.total_steps),
        "np.errstate enter/exit": _errstate,
    }
    out = {}
    for name, f in cands.items():
        ts = []
        for _ in range(5):
            tr.model.loss(*tr.task.batch(0, 1)[:2], 1.0)
            tr.model.backward()
            t0 = clock()
            for _ in range(reps):
                f()
            ts.append((clock() - t0) / reps)
        out[name] = statistics.median(ts) * 1e3
    return out


def _errstate():
    import numpy as np
    with np.errstate(over="ignore", invalid="ignore"):
        pass


def main():
    a = parse()
    common.set_threads(a.threads)
    os.environ["NUMBA_NUM_THREADS"] = str(a.threads)        # as launch.py's set_threads
    import bench_mlp     # load_baseline_tree
    tr = make_trainer("ddp_scratch", a)
    sides = [("bare", bare_step_fn(tr)), ("trainer", trainer_step_fn(tr))]
    if a.baseline_tree:
        sides.append((BASELINE, trainer_step_fn(make_trainer(bench_mlp.load_baseline_tree(a.baseline_tree), a))))
    peer = None if a.no_torch else torch_parts(tr, a.threads)
    check = {}
    if peer:        # the same weights and batch on both sides: the same first loss
        x, y, n = tr.task.batch(0, 0)
        first = float(tr.model.loss(x, y, 1.0 / n)[0])
        check = {"first_loss_ddp_scratch": first, "first_loss_torch": peer[2],
                 "rel_diff": abs(first - peer[2]) / abs(peer[2])}
        sides.append(("torch", peer[0]))
    rounds = interleaved(sides, a)
    clean = [r for r in rounds if all(f < common.CLEAN for _, f in r.values())]
    use = clean if len(clean) >= 3 else rounds
    ms = {name: statistics.median(r[name][0] / a.steps * 1e3 for r in use) for name, _ in sides}
    overhead = statistics.median(r["trainer"][0] / r["bare"][0] for r in use) - 1
    res = {"env": common.environment(), "clock": a.clock, "config": os.path.relpath(a.config, common.ROOT), "overrides": a.overrides,
           "model": tr.model.describe(), "optimizer": tr.cfg.optim.name, "batch": tr.cfg.train.batch_size,
           "threads": a.threads, "steps_per_window": a.steps, "rounds": len(rounds), "clean_rounds": len(clean),
           "median_over": "clean rounds" if use is clean else "all rounds (machine busy)",
           "step_ms": ms, "overhead": overhead, "target_overhead_max": 0.05,
           "foreign_cpu_share": [max(f for _, f in r.values()) for r in rounds]}
    if a.baseline_tree:
        res["baseline_tree"] = a.baseline_tree
        res["baseline_overhead"] = statistics.median(r[BASELINE][0] / r["bare"][0] for r in use) - 1
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    res["profile_ms"] = {"trainer": profile(tr, sides[1][1], a.reps, clock),
                         "bare": profile(tr, sides[0][1], a.reps, clock)}
    # the same in-place figure from the phases only the trainer has: under load, steadier than the
    # window ratio (the shared phases' noise cancels out of it)
    t, b = res["profile_ms"]["trainer"], res["profile_ms"]["bare"]
    res["extra_ms_in_place"] = sum(t[k] for k in ONLY_TRAINER) - b[RESIDUAL]
    res["overhead_in_place"] = res["extra_ms_in_place"] / b["step"]
    if peer:
        res["check"] = check
        res["profile_ms"]["torch"] = profile_parts(peer[1], a.reps, clock)
        res["bare_vs_torch"] = statistics.median(r["torch"][0] / r["bare"][0] for r in use)
        res["trainer_vs_torch"] = statistics.median(r["torch"][0] / r["trainer"][0] for r in use)
    res["own_work_ms"] = own_work(tr, clock)
    print(f"{res['model']}, {res['optimizer']}, batch {res['batch']}, {a.threads} thread(s); "
          f"{len(rounds)} rounds of {a.steps} steps per side ({len(clean)} clean)")
    for name in ms:
        print(f"  {name:18s} {ms[name]:8.2f} ms/step")
    print(f"  overhead: {100 * overhead:+.1f}% (target <= 5%); in place, from the trainer's own phases: "
          f"{res['extra_ms_in_place']:.3f} ms = {100 * res['overhead_in_place']:+.1f}%"
          + (f"; baseline tree {100 * res['baseline_overhead']:+.1f}%" if a.baseline_tree else ""))
    if peer:
        print(f"  speed against torch's step: bare {res['bare_vs_torch']:.3f}x, trainer {res['trainer_vs_torch']:.3f}x")
    p = res["profile_ms"]
    print("  per phase, ms per step in place (" + " / ".join(p) + "):")
    for k in p["trainer"]:
        print(f"    {k:32s} " + "  ".join(f"{q[k]:8.3f}" if k in q else f"{'-':>8s}" for q in p.values()))
    print("  the trainer's own work, each part alone (ms):")
    for k, v in res["own_work_ms"].items():
        print(f"    {k:36s} {v:8.4f}")
    print("->", common.write_json(a.out, res))


if __name__ == "__main__":
    main()
