"""LeNet-5 train step (examples/cnn/lenet.py, float32, AdamW): ddp_scratch against PyTorch eager,
same run, and where ddp_scratch's time goes.

  python benchmarks/bench_cnn.py                 # 1 process, batch 256, 2 threads
  options: --batch, --threads, --steps, --windows, --no-torch, --batch-threads

The step is the one Trainer.train_step makes (zero_grad, loss, backward, finish_grads, AdamW
step); torch's is nn.Sequential(Conv2d, ReLU, MaxPool2d, ..., Linear) with CrossEntropyLoss and
torch.optim.AdamW, holding the same initial weights (ours are channels-last: the first Linear's
rows are permuted to torch's (C, H, W) flatten order), on the same batch. Timed in alternating
windows like bench_mlp.py. The profile times every layer's forward and backward in place, and
inside them every GEMM (B.xp.matmul through a timing proxy), so each convolution splits into its
GEMMs and the rest: im2col (padding + the strided copy) in forward, col2im (the per-tap
scatter-add into dx) in backward.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (sets up sys.path; must precede numpy/torch for the thread settings)

LR, WD = 1e-3, 1e-4
IMAGE = (28, 28, 1)


def parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10, help="steps per timing window")
    ap.add_argument("--windows", type=int, default=7, help="clean windows wanted per side")
    ap.add_argument("--max-windows", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--batch-threads", type=int, default=0, metavar="N",
                    help="also time ddp_scratch with its per-image copies and loops split over N threads "
                         "(nn/batch_threads.py, off by default) as a third side, same weights: its ratio to "
                         "the plain ddp_scratch side and to torch, in the same run")
    ap.add_argument("--out", default="cnn_single.json", help="JSON file name under benchmarks/results/")
    return ap.parse_args()


def build_scratch():
    sys.path.insert(0, os.path.join(common.ROOT, "examples", "cnn"))
    from lenet import LeNet5, Options
    from ddp_scratch.nn.optim import Adam
    model = LeNet5(784, 10, Options(), dtype="float32", seed=0)
    return model, Adam(model.space, LR, weight_decay=WD, decoupled=True)


def scratch_step_fn(model, opt, x, t, scale, batch_threads=None):
    """One training step; batch_threads=N: with the batch split over N threads (nn/batch_threads.py)."""
    from ddp_scratch.nn import batch_threads as BT
    space = model.space

    def step():
        if batch_threads is not None:
            BT.set_threads(batch_threads)
        try:
            space.zero_grad()
            loss, _ = model.loss(x, t, scale)
            model.backward()
            space.finish_grads()
            opt.step()
        finally:
            if batch_threads is not None:
                BT.set_threads(None)
        return loss
    return step


def build_torch(model):
    """The same network in torch, NCHW, with ddp_scratch's initial weights."""
    import torch
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    P = {p.name: torch.from_numpy(p.data.copy()) for p in model.space.plist}
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    lins = [m for m in net if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for conv, layer in zip(convs, (model.conv1, model.conv2)):
            conv.weight.copy_(P[layer.W.name].reshape(layer.kh, layer.kw, layer.c, layer.f).permute(3, 2, 0, 1))
            conv.bias.copy_(P[layer.b.name])
        for i, (lin, fc) in enumerate(zip(lins, model.fcs)):
            W = P[fc.W.name]                                    # (D_in, D_out), rows in our flatten order
            if i == 0:                                          # (H, W, C) rows -> torch's (C, H, W)
                h, w, c = model.shapes[-1]
                W = W.reshape(h, w, c, -1).permute(2, 0, 1, 3).reshape(h * w * c, -1)
            lin.weight.copy_(W.T)
            lin.bias.copy_(P[fc.b.name])
    return net


def torch_step_fn(net, x, t):
    import torch
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WD)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss = loss_fn(net(x), t)
        loss.backward()
        opt.step()
        return float(loss.detach())
    return step


# ----------------------------------------------------------------------------- profile

class TimedXP:
    """NumPy with matmul timed: seconds accumulate into `self.gemm` (read and reset by the caller)."""

    def __init__(self, np):
        self.np, self.gemm = np, 0.0

    def __getattr__(self, name):
        return getattr(self.np, name)

    def matmul(self, a, b, out=None):
        t0 = time.perf_counter()
        r = self.np.matmul(a, b, out=out)
        self.gemm += time.perf_counter() - t0
        return r


def _kind(layer):
    name = type(layer).__name__
    if name == "Conv2d":
        return f"conv {layer.kh}x{layer.kw}x{layer.f}" + ("" if layer.need_dx else " (no dx)")
    if name == "Linear":
        return f"linear {layer.W.shape[0]}x{layer.W.shape[1]}"
    if name == "Activation":
        return layer.kind
    return {"MaxPool2d": "max pool", "Flatten": "flatten"}.get(name, name)


def profile_scratch(model, opt, x, t, scale, reps=20):
    """Median ms per call of one step, in step order, each layer call split into GEMM and rest."""
    import numpy as np
    from ddp_scratch import backend as B
    from ddp_scratch.nn import ops
    timed = TimedXP(B.xp)
    B.xp = timed
    rows = []
    try:
        for r in range(reps + 3):
            times = []

            def T(name, f, *a):
                timed.gemm = 0.0
                t0 = time.perf_counter()
                out = f(*a)
                total = time.perf_counter() - t0
                times.append((name, total, timed.gemm))
                return out
            model.space.zero_grad()
            h = x.reshape(x.shape[0], *IMAGE)
            for i, layer in enumerate(model.layers):
                h = T(f"fwd {i} {_kind(layer)}", layer.forward, h)
            _, _, p = T("fwd softmax-xent", ops.softmax_xent_forward, h, t, scale, model.buf("probs", h.shape))
            d = T("bwd softmax-xent", ops.softmax_xent_backward, p, t, scale)
            for i in reversed(range(len(model.layers))):
                d = T(f"bwd {i} {_kind(model.layers[i])}", model.layers[i].backward, d)
            T("finish_grads", model.space.finish_grads)
            T("optimizer AdamW", opt.step)
            if r >= 3:
                rows.append(times)
    finally:
        B.xp = timed.np
    names = [n for n, _, _ in rows[0]]
    tot = np.median(np.array([[s for _, s, _ in r] for r in rows]), axis=0) * 1e3
    gemm = np.median(np.array([[g for _, _, g in r] for r in rows]), axis=0) * 1e3
    return [{"call": n, "ms": float(a), "gemm_ms": float(g)} for n, a, g in zip(names, tot, gemm)]


def breakdown(profile):
    """The step's time by kind of work (ms): GEMMs, im2col, col2im, pooling, the rest."""
    parts = {"GEMM (conv and linear, forward and backward)": 0.0, "im2col (padding, strided copy) + bias, conv forward": 0.0,
             "col2im (per-tap scatter-add + W^T, conv backward)": 0.0, "max pool (forward + backward)": 0.0,
             "ReLU (forward + backward)": 0.0, "softmax cross-entropy": 0.0, "optimizer (AdamW) + finish_grads": 0.0,
             "other (bias adds, flatten)": 0.0}
    keys = list(parts)
    for p in profile:
        c, rest = p["call"], p["ms"] - p["gemm_ms"]
        parts[keys[0]] += p["gemm_ms"]
        if "conv" in c:
            parts[keys[1] if c.startswith("fwd") else keys[2]] += rest
        elif "pool" in c:
            parts[keys[3]] += rest
        elif "relu" in c:
            parts[keys[4]] += rest
        elif "softmax" in c:
            parts[keys[5]] += rest
        elif "optimizer" in c or "finish" in c:
            parts[keys[6]] += rest
        else:
            parts[keys[7]] += rest
    return parts


def profile_torch(net, x, t, reps=20):
    """torch's step by operator (torch.profiler, self CPU time): ms per step, largest first."""
    from torch.profiler import ProfilerActivity, profile
    step = torch_step_fn(net, x, t)
    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            step()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [{"op": e.key, "ms": e.self_cpu_time_total / 1e3 / reps} for e in rows[:10]]


# ----------------------------------------------------------------------------- main

def main():
    a = parse()
    common.set_threads(a.threads)
    import numpy as np
    from bench_mlp import interleaved, paired_ratio
    model, opt = build_scratch()
    rng = np.random.default_rng(1)
    x = rng.random((a.batch, 784), dtype=np.float32)
    t = rng.integers(0, 10, a.batch)
    scratch = scratch_step_fn(model, opt, x, t, 1.0 / a.batch)
    sides = [("ddp_scratch", scratch)]
    res = {"check": {}}
    if not a.no_torch:
        import torch
        torch.set_num_threads(a.threads)
        net = build_torch(model)
        xt, tt = torch.from_numpy(x).reshape(a.batch, 1, 28, 28), torch.from_numpy(t)
        tstep = torch_step_fn(net, xt, tt)
        l_s, l_t = scratch(), tstep()
        res["check"] = {"first_loss_ddp_scratch": float(l_s), "first_loss_torch": l_t,
                        "rel_diff": abs(l_s - l_t) / abs(l_t)}
        sides.append(("torch", tstep))
    if a.batch_threads > 1:
        m_bt, o_bt = build_scratch()
        sides.append(("ddp_scratch_bt", scratch_step_fn(m_bt, o_bt, x, t, 1.0 / a.batch, batch_threads=a.batch_threads)))
    rounds = interleaved(sides, a.steps, a.windows, a.max_windows, a.warmup)
    flops = model.flops_per_step(a.batch)
    out = {"benchmark": "cnn_single", "model": model.describe() + " float32", "optimizer": f"AdamW lr={LR} wd={WD}",
           "batch_per_process": a.batch, "threads_per_process": a.threads, "world_size": 1,
           "steps_per_window": a.steps, "warmup_steps": a.warmup, "env": common.environment(), "sides": {}}
    for name in rounds[0]:
        win = [r[name] for r in rounds]
        steps = common.summarize(win, a.steps)
        out["sides"][name] = {"steps_per_s": steps, "samples_per_s": steps["median"] * a.batch,
                              "gflops_per_s": steps["median"] * flops / 1e9, "window_s": [w[0] for w in win]}
    if "torch" in out["sides"]:
        out["ratio"], out["clean_rounds"] = paired_ratio(rounds, "ddp_scratch", "torch")
        out["target_ratio"] = 0.8
    if a.batch_threads > 1:
        out["batch_threads"] = a.batch_threads
        out["ratio_batch_threads_over_plain"], _ = paired_ratio(rounds, "ddp_scratch_bt", "ddp_scratch")
        if "torch" in out["sides"]:
            out["ratio_batch_threads_over_torch"], _ = paired_ratio(rounds, "ddp_scratch_bt", "torch")
    prof = profile_scratch(model, opt, x, t, 1.0 / a.batch)
    out["profile"], out["breakdown_ms"] = prof, breakdown(prof)
    if not a.no_torch:
        out["torch_profile"] = profile_torch(build_torch(model), xt, tt)
    out.update(res)
    path = common.write_json(a.out, out)

    print(f"LeNet-5 train step: batch {a.batch}, {a.threads} thread(s), {len(rounds)} alternating windows x "
          f"{a.steps} steps per side")
    for name, s in out["sides"].items():
        r = s["steps_per_s"]
        print(f"  {name:17s} {r['median']:8.2f} steps/s  {s['samples_per_s']:9.0f} samples/s  "
              f"{s['gflops_per_s']:6.1f} GFLOP/s  (best {r['best']:.2f}, {r['clean_windows']}/{r['windows']} clean)")
    if "ratio" in out:
        print(f"  ratio ddp_scratch/torch: {out['ratio']:.2f}x (median over {out['clean_rounds']} clean rounds of "
              f"paired windows; target >= 0.8x)")
    if "ratio_batch_threads_over_plain" in out:
        print(f"  ratio ddp_scratch_bt (batch split over {a.batch_threads} threads) / ddp_scratch: "
              f"{out['ratio_batch_threads_over_plain']:.2f}x" + (f"; ddp_scratch_bt/torch: "
              f"{out['ratio_batch_threads_over_torch']:.2f}x" if "ratio_batch_threads_over_torch" in out else ""))
    if "ratio" in out:
        c = res["check"]
        print(f"  check: first loss {c['first_loss_ddp_scratch']:.6f} vs {c['first_loss_torch']:.6f}")
    total = sum(p["ms"] for p in prof)
    print(f"  ddp_scratch step, median ms per call (GEMM part in brackets), total {total:.2f} ms:")
    for p in prof:
        print(f"    {p['call']:28s} {p['ms']:7.3f}  [{p['gemm_ms']:6.3f}]")
    print("  where the time goes:")
    for k, v in out["breakdown_ms"].items():
        print(f"    {k:52s} {v:7.3f} ms  {100 * v / total:5.1f} %")
    if "torch_profile" in out:
        print("  torch's step, self CPU ms per step by operator (torch.profiler), top 10:")
        for p in out["torch_profile"]:
            print(f"    {p['op']:52s} {p['ms']:7.3f}")
    print(f"  -> {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
