"""GPT train step: ddp_scratch against PyTorch eager, same run; peak memory against the analytic
figure; and nanoGPT's CPU shape on a text as a loss anchor.

  python benchmarks/bench_gpt.py throughput   # 4 layers, 4 heads, d128, context 64, batch 32, float32,
                                              #   1 process, 2 threads: tokens/s, ours vs torch (target >= 1.3x),
                                              #   vs the NumPy path and vs the step's GEMMs alone (the ceiling);
                                              #   where the step's time goes; numba's compile and cache cost
  python benchmarks/bench_gpt.py memory       # peak RSS of a training process vs memory_report (target <= 1.5x)
  python benchmarks/bench_gpt.py anchor       # nanoGPT CPU shape (batch 12) on a text: loss after N steps,
                                              #   ours (the real trainer) and torch on the same windows
  python benchmarks/bench_gpt.py all          # the three, each in its own process
  mpiexec -n 2 python benchmarks/bench_gpt.py ddp   # the same model, batch 16 per rank (global 32), 1 thread
                                              #   per rank: Comm's all-reduce vs torch DDP (gloo)

Both sides start from the same weights (ours copied into a nanoGPT-style nn.Module: nn.Linear,
nn.LayerNorm, tied head, scaled_dot_product_attention(is_causal=True) as nanoGPT uses, or the
explicit masked softmax with --torch-attn manual), train on the same batch with AdamW (decay on
2-D weights), clip at global norm 1, and are timed in alternating windows (benchmarks/common.py).
"""
import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (before numpy/torch: thread settings)

SHAPE = dict(n_layer=4, n_head=4, d_model=128, block_size=64)
V = 65                      # shakespeare_char's vocabulary size
LR, WD, CLIP = 1e-3, 0.1, 1.0


def parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["throughput", "memory", "anchor", "all", "ddp"], nargs="?", default="all")
    ap.add_argument("--batch", type=int, help="sequences per process (default 32; ddp: 16 per rank)")
    ap.add_argument("--threads", type=int, help="math threads per process (default 2; ddp: 1 per rank)")
    ap.add_argument("--steps", type=int, default=4, help="steps per timing window")
    ap.add_argument("--windows", type=int, default=5, help="clean rounds wanted (median reported)")
    ap.add_argument("--max-windows", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--torch-attn", choices=["sdpa", "manual"], default="sdpa")
    ap.add_argument("--kernels", choices=["auto", "numba", "numpy"], default="auto",
                    help="ddp_scratch's fused CPU kernels (the config's kernels:); throughput also times the "
                         "NumPy path as a side of its own unless this is numpy")
    ap.add_argument("--no-compile-cost", action="store_true",
                    help="throughput: skip timing numba's first step with an empty and a filled cache")
    ap.add_argument("--iters", type=int, default=500, help="anchor: training steps")
    ap.add_argument("--text", default="/usr/share/common-licenses/GPL-3", help="anchor: a UTF-8 text file")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for other processes to leave the CPUs")
    ap.add_argument("--out", default="gpt.json", help="JSON file name under benchmarks/results/")
    a = ap.parse_args()
    a.batch = a.batch or (16 if a.mode == "ddp" else 32)
    a.threads = a.threads or (1 if a.mode == "ddp" else 2)
    common.set_threads(a.threads)
    return a


# ----------------------------------------------------------------------------- the two sides

def build_ours(batch):
    from ddp_scratch.nn.gpt import GPT
    from ddp_scratch.nn.optim import Adam
    model = GPT(V, dtype="float32", seed=0, **SHAPE)
    return model, Adam(model.space, LR, betas=(0.9, 0.99), weight_decay=WD, decoupled=True)


def ours_step_fn(model, opt, x, t, lr=None, comm=None):
    """What Trainer.train_step does on one rank: zero, loss, backward, finish, [all-reduce], clip, AdamW."""
    import math

    from ddp_scratch import backend as B
    space, scale = model.space, 1.0 / (t.size * (comm.size if comm else 1))

    def step(x=x, t=t, lr=lr):
        space.zero_grad()
        loss, _ = model.loss(x, t, scale)
        model.backward()
        space.finish_grads()
        if comm is not None:
            comm.all_reduce_gradients(space.grads_full)
        g = space.grads
        n = math.sqrt(float(B.xp.dot(g, g)))
        if n > CLIP:
            g *= CLIP / (n + 1e-6)
        opt.step(lr)
        return loss
    return step


def build_torch(model, attn, device="cpu"):
    """nanoGPT's model (bias on, dropout 0) holding ddp_scratch's initial weights (copied from the
    device where they live: benchmarks/gpu/bench_gpu.py builds it on CUDA)."""
    import torch
    import torch.nn.functional as F
    nn = torch.nn
    C, H, Tm = model.C, model.H, model.Tmax

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.c_attn, self.c_proj = nn.LayerNorm(C), nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.ln_2, self.c_fc, self.c_fc2 = nn.LayerNorm(C), nn.Linear(C, 4 * C), nn.Linear(4 * C, C)
            self.register_buffer("mask", torch.tril(torch.ones(Tm, Tm, dtype=torch.bool)))

        def forward(self, x):
            Bn, T, _ = x.shape
            q, k, v = (z.view(Bn, T, H, C // H).transpose(1, 2) for z in self.c_attn(self.ln_1(x)).split(C, dim=2))
            if attn == "sdpa":
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                att = (q @ k.transpose(-2, -1)) * (1.0 / (C // H) ** 0.5)
                y = F.softmax(att.masked_fill(~self.mask[:T, :T], float("-inf")), dim=-1) @ v
            x = x + self.c_proj(y.transpose(1, 2).contiguous().view(Bn, T, C))
            return x + self.c_fc2(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(model.V, C), nn.Embedding(Tm, C)
            self.h, self.ln_f = nn.ModuleList([Block() for _ in range(model.L)]), nn.LayerNorm(C)

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
            for b in self.h:
                x = b(x)
            logits = F.linear(self.ln_f(x), self.wte.weight)          # tied head
            return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1), ignore_index=-1)

    net, P = GPT(), model.space.named()
    with torch.no_grad():
        def put(dst, name, transpose=False):
            from ddp_scratch import backend as B
            src = B.to_numpy(P[name].data)
            dst.copy_(torch.from_numpy((src.T if transpose else src).copy()))
        put(net.wte.weight, "wte")
        put(net.wpe.weight, "wpe")
        for i, b in enumerate(net.h):
            for mod, ours in ((b.ln_1, "ln1"), (b.ln_2, "ln2")):
                put(mod.weight, f"h{i}.{ours}.w")
                put(mod.bias, f"h{i}.{ours}.b")
            for mod, ours in ((b.c_attn, "attn"), (b.c_proj, "proj"), (b.c_fc, "fc"), (b.c_fc2, "fc2")):
                put(mod.weight, f"h{i}.{ours}.w", transpose=True)
                put(mod.bias, f"h{i}.{ours}.b")
        put(net.ln_f.weight, "lnf.w")
        put(net.ln_f.bias, "lnf.b")
    net = net.to(device)
    decay = [p for p in net.parameters() if p.dim() >= 2]
    rest = [p for p in net.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD}, {"params": rest, "weight_decay": 0.0}],
                            lr=LR, betas=(0.9, 0.99), eps=1e-8)
    return net, opt


def torch_step_fn(net, opt, x, t):
    import torch

    def step(x=x, t=t, lr=None):
        if lr is not None:
            for g in opt.param_groups:
                g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss = net(x, t)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), CLIP)
        opt.step()
        return float(loss.detach())
    return step


# ----------------------------------------------------------------------------- modes

NUMPY_PATH, GEMMS, NUMBA_ALL = "ddp_scratch_numpy_path", "gemm_ceiling", "ddp_scratch_kernels_all_threads"


def with_kernels(setting, step):
    """step() run under another `kernels:` setting (a side of its own in the same run)."""
    from ddp_scratch.nn import jit

    def run():
        before = jit.setting()
        jit.use(setting)
        try:
            return step()
        finally:
            jit.use(before)
    return run


def with_kernel_threads(n, step):
    """step() with the GPT's kernels on n numba threads (transformer_kernels.THREADS; None: all)."""
    from ddp_scratch.nn import transformer_kernels as K

    def run():
        before = K.THREADS
        K.THREADS = n
        try:
            return step()
        finally:
            K.THREADS = before
    return run


def run_throughput(a):
    import numpy as np
    import torch
    import gpt_profile
    from bench_mlp import interleaved, paired_ratio
    from ddp_scratch.nn import jit
    torch.set_num_threads(a.threads)
    jit.use(a.kernels)
    cost = None if a.no_compile_cost or a.kernels == "numpy" else gpt_profile.compile_cost(a.threads, a.batch)
    if not a.no_wait:
        common.wait_for_idle()
    model, opt = build_ours(a.batch)
    T = model.Tmax
    rng = np.random.default_rng(1)
    x, t = rng.integers(0, V, (a.batch, T)), rng.integers(0, V, (a.batch, T))
    ours = ours_step_fn(model, opt, x, t)
    net, topt = build_torch(model, a.torch_attn)
    theirs = torch_step_fn(net, topt, torch.from_numpy(x), torch.from_numpy(t))
    check = {"first_loss_ddp_scratch": ours() * 1.0, "first_loss_torch": theirs()}
    check["rel_diff"] = abs(check["first_loss_ddp_scratch"] - check["first_loss_torch"]) / check["first_loss_torch"]
    sides = [("ddp_scratch", ours), ("torch", theirs)]
    if a.kernels != "numpy":                  # the same step on the NumPy path: before/after in one run
        m_np, o_np = build_ours(a.batch)
        sides.append((NUMPY_PATH, with_kernels("numpy", ours_step_fn(m_np, o_np, x, t))))
    from ddp_scratch.nn import transformer_kernels as K
    all_threads = a.kernels != "numpy" and a.threads > 1 and jit.active() and K.THREADS != a.threads
    if all_threads:                           # OpenBLAS's spinning workers vs numba's second thread
        m_1, o_1 = build_ours(a.batch)
        sides.append((NUMBA_ALL, with_kernel_threads(None, ours_step_fn(m_1, o_1, x, t))))
    m_g, o_g = build_ours(a.batch)            # its own buffers: the replay overwrites them
    gemms = gpt_profile.gemm_step_fn(m_g, ours_step_fn(m_g, o_g, x, t))
    sides.append((GEMMS, gemms))
    rounds = interleaved(sides, a.steps, a.windows, a.max_windows, a.warmup)
    tok = a.batch * T
    res = {"check": check, "tokens_per_step": tok, "flops_per_step": model.flops_per_step(tok), "sides": {},
           "kernels": jit.describe(), "gemm_calls_per_step": len(gemms.shapes), "gemm_flops_per_step": gemms.flops}
    for side, _ in sides:
        res["sides"][side] = common.summarize([r[side] for r in rounds], a.steps, tok)
    ratio, clean = paired_ratio(rounds, "ddp_scratch", "torch")
    res["ratio"], res["clean_rounds"], res["target_ratio"] = ratio, clean, 1.3
    res["vs_gemm_ceiling"], _ = paired_ratio(rounds, "ddp_scratch", GEMMS)
    if a.kernels != "numpy":
        res["vs_numpy_path"], _ = paired_ratio(rounds, "ddp_scratch", NUMPY_PATH)
        res["numpy_path_vs_torch"], _ = paired_ratio(rounds, NUMPY_PATH, "torch")
    res["kernel_threads"] = K.THREADS
    if all_threads:
        res["kernels_all_threads_vs_torch"], _ = paired_ratio(rounds, NUMBA_ALL, "torch")
    res["profile"] = gpt_profile.profile_scratch(model, opt, ours)
    if a.kernels != "numpy":
        res["profile_numpy_path"] = gpt_profile.profile_scratch(m_np, o_np, with_kernels("numpy", ours_step_fn(
            m_np, o_np, x, t)))
    res["numba_compile"] = cost
    o, th = res["sides"]["ddp_scratch"]["median"], res["sides"]["torch"]["median"]
    print(f"first loss: ours {check['first_loss_ddp_scratch']:.6f}, torch {check['first_loss_torch']:.6f} "
          f"(rel diff {check['rel_diff']:.1e}); kernels: {res['kernels']}")
    gflops = o * model.flops_per_step(tok) / tok / 1e9
    print(f"tokens/s: ddp_scratch {o:,.0f}  torch ({a.torch_attn}) {th:,.0f}  ratio {ratio:.2f}x "
          f"(target >= 1.3x; {clean} clean rounds of {len(rounds)}); ours {gflops:.1f} GFLOP/s")
    print(f"  the step's {len(gemms.shapes)} GEMMs alone: {res['sides'][GEMMS]['median']:,.0f} tokens/s; "
          f"ours is {res['vs_gemm_ceiling']:.2f} of that matmul-bound ceiling")
    if a.kernels != "numpy":
        print(f"  NumPy path (kernels: numpy): {res['sides'][NUMPY_PATH]['median']:,.0f} tokens/s, "
              f"{res['numpy_path_vs_torch']:.2f}x torch; the kernels make the step {res['vs_numpy_path']:.2f}x faster")
        gpt_profile.print_profile(res["profile_numpy_path"], "NumPy path step profile")
    if all_threads:
        print(f"  GPT kernels on all {a.threads} numba threads (instead of {K.THREADS}): "
              f"{res['sides'][NUMBA_ALL]['median']:,.0f} tokens/s, {res['kernels_all_threads_vs_torch']:.2f}x torch")
    gpt_profile.print_profile(res["profile"], f"ddp_scratch step profile ({res['kernels']})")
    if cost and "error" not in cost:
        print(f"  numba: first step compiles the kernels in {cost['empty_cache']['kernels_s']:.1f} s (empty "
              f"NUMBA_CACHE_DIR), loads them in {cost['cached']['kernels_s']:.1f} s from the cache")
    return res


def run_ddp(a):
    """Ranks under mpiexec, each its own batch: ours with Comm's all-reduce vs torch DDP (gloo)."""
    import numpy as np
    from bench_mlp import interleaved, paired_ratio
    from ddp_scratch.parallel.world import Comm
    comm = Comm()
    world = comm.size
    if world < 2:
        raise SystemExit("ddp mode needs at least 2 ranks: mpiexec -n 2 python benchmarks/bench_gpt.py ddp")
    model, opt = build_ours(a.batch)
    T = model.Tmax
    rng = np.random.default_rng(100 + comm.rank)       # each rank its own shard
    x, t = rng.integers(0, V, (a.batch, T)), rng.integers(0, V, (a.batch, T))
    ours = ours_step_fn(model, opt, x, t, comm=comm)
    torch = common.torch_ddp_init(comm, a.threads)
    net, topt = build_torch(model, a.torch_attn)
    ddp = torch.nn.parallel.DistributedDataParallel(net)
    theirs = torch_step_fn(ddp, topt, torch.from_numpy(x), torch.from_numpy(t))
    l_s, l_t = ours() * world, theirs()       # ours is the local sum over the global token count
    check = {"first_loss_ddp_scratch": l_s, "first_loss_torch": l_t, "rel_diff": abs(l_s - l_t) / l_t}
    MPI = comm.MPI
    rounds = interleaved([("ddp_scratch", ours), ("torch_ddp_gloo", theirs)], a.steps, a.windows, a.max_windows,
                         a.warmup, sync=comm.comm.Barrier, total_cpu=lambda v: comm.comm.allreduce(v, op=MPI.SUM),
                         reduce_max=lambda v: comm.comm.allreduce(v, op=MPI.MAX))
    P = {k: p.detach().numpy() for k, p in net.named_parameters()}
    check["param_max_abs_diff_after"] = float(np.abs(model.space.named()["wte"].data - P["wte.weight"]).max())
    torch.distributed.destroy_process_group()
    tok = a.batch * T * world
    res = {"world_size": world, "batch_per_rank": a.batch, "threads_per_rank": a.threads, "check": check,
           "tokens_per_step": tok, "flops_per_step": model.flops_per_step(tok), "sides": {}}
    for side in ("ddp_scratch", "torch_ddp_gloo"):
        res["sides"][side] = common.summarize([r[side] for r in rounds], a.steps, tok)
    res["ratio"], res["clean_rounds"] = paired_ratio(rounds, "ddp_scratch", "torch_ddp_gloo")
    if comm.rank == 0:
        o, th = res["sides"]["ddp_scratch"]["median"], res["sides"]["torch_ddp_gloo"]["median"]
        print(f"first loss (rank 0): ours {l_s:.6f}, torch {l_t:.6f} (rel diff {check['rel_diff']:.1e}); "
              f"wte after: max |diff| {check['param_max_abs_diff_after']:.1e}")
        print(f"{world} ranks, tokens/s: ddp_scratch {o:,.0f}  torch DDP gloo ({a.torch_attn}) {th:,.0f}  "
              f"ratio {res['ratio']:.2f}x ({res['clean_rounds']} clean rounds of {len(rounds)})")
    return res, comm.rank


def run_memory(a, steps=20):
    """Peak RSS of a process that imports ddp_scratch, builds the model and trains `steps` steps."""
    import resource

    import numpy as np
    base = common.rss_bytes()
    from ddp_scratch.nn import jit
    jit.use(a.kernels)
    if jit.active():          # numba + llvmlite: ~80 MiB of RSS once per process, whatever the model
        base, before = common.rss_bytes(), base
    else:
        before = base
    model, opt = build_ours(a.batch)
    rng = np.random.default_rng(1)
    x, t = rng.integers(0, V, (a.batch, model.Tmax)), rng.integers(0, V, (a.batch, model.Tmax))
    step = ours_step_fn(model, opt, x, t)
    for _ in range(steps):
        step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rep = model.memory_report(a.batch * model.Tmax)
    total = rep["memory_total_bytes"]
    res = {"peak_rss_bytes": peak, "rss_after_imports_bytes": base, "analytic": rep, "kernels": jit.describe(),
           "numba_import_rss_bytes": base - before,
           "ratio_peak_rss": peak / total, "ratio_peak_above_imports": (peak - base) / total}
    mb = 2.0 ** 20
    print("analytic: " + ", ".join(f"{k[7:-6]} {v / mb:.1f}" for k, v in rep.items()) + " MiB")
    print(f"peak RSS {peak / mb:.1f} MiB ({base / mb:.1f} MiB after imports, numba's {(base - before) / mb:.1f}); "
          f"kernels: {res['kernels']}: {peak / total:.2f}x the analytic total, "
          f"{(peak - base) / total:.2f}x counting only what the run added (target <= 1.5x)")
    return res


def run_anchor(a):
    """nanoGPT CPU shape on a text: our trainer, then torch on the very same windows and schedule."""
    import tempfile

    import numpy as np
    import torch
    from ddp_scratch.parallel.world import Comm
    from ddp_scratch.config import load_config
    from ddp_scratch.nn.optim import lr_at
    from ddp_scratch.run.trainer import Options, Trainer
    torch.set_num_threads(a.threads)
    cfg = load_config(os.path.join(common.ROOT, "experiments", "gpt_char.yaml"),
                      [f"data.path={a.text}", f"train.max_steps={a.iters}", f"train.eval_every={a.iters}",
                       "logging.progress=false", "train.check_every=0"])
    tr = Trainer(cfg, Options(out=tempfile.mkdtemp(prefix="anchor"), quiet=True), comm=Comm(serial=True))
    net, topt = build_torch(tr.model, "sdpa")           # the same initial weights
    s = tr.run()
    task, step = tr.task, torch_step_fn(net, topt, None, None)
    losses = []
    for i in range(a.iters):
        x, y, _ = task.batch(*divmod(i, task.steps_per_epoch))
        losses.append(step(torch.from_numpy(x.copy()), torch.from_numpy(y.copy()), lr_at(cfg.optim, i, a.iters)))
    X, Y, _ = task.evals["val"]
    with torch.no_grad():      # windows are full: the mean over rows is the mean over tokens
        val = sum(net(torch.from_numpy(X[i:i + 64]), torch.from_numpy(Y[i:i + 64])).item() * len(X[i:i + 64])
                  for i in range(0, len(X), 64)) / len(X)
    res = {"text": a.text, "iters": a.iters,
           "ours": {"train_loss_last_period": s["train_loss"], "val_loss": s["val_loss"], "tokens_per_s": s["tokens_per_s"]},
           "torch": {"train_loss_last_period": float(np.mean(losses[-task.steps_per_epoch:])), "val_loss": val}}
    print(f"anchor ({os.path.basename(a.text)}, {a.iters} steps of 12x64 tokens): "
          f"val loss ours {s['val_loss']:.4f} / torch {val:.4f}; train loss (last {task.steps_per_epoch} steps) "
          f"ours {s['train_loss']:.4f} / torch {res['torch']['train_loss_last_period']:.4f}; "
          f"ours {s['tokens_per_s']:,.0f} tokens/s")
    return res


def main():
    a = parse()
    if a.mode == "all":   # each in its own process: peak RSS must not include torch, threads set first
        out = {}
        for mode in ("throughput", "memory", "anchor"):
            print(f"== {mode}", flush=True)
            opts = [f"--{k.replace('_', '-')}" + ("" if v is True else f"={v}") for k, v in vars(a).items()
                    if k not in ("mode", "out") and v is not False]
            r = subprocess.run([sys.executable, __file__, mode, "--out", f"gpt_{mode}.json", *opts])
            if r.returncode:
                return r.returncode
            with open(os.path.join(common.RESULTS, f"gpt_{mode}.json")) as f:
                out[mode] = json.load(f)["result"]
        print("->", common.write_json(a.out, {"benchmark": "gpt", "environment": out["throughput"].get("env"), **out}))
        return 0
    if a.mode == "ddp":
        res, rank = run_ddp(a)
        if rank == 0:
            res["env"] = common.environment()
            print("->", common.write_json(a.out if a.out != "gpt.json" else "gpt_ddp.json",
                                          {"benchmark": "gpt_ddp", "args": vars(a), "result": res}))
        return 0
    if a.mode == "memory":
        import numpy  # noqa: F401  (the baseline RSS includes numpy, as a training process does)
        res = run_memory(a)
    else:
        res = run_throughput(a) if a.mode == "throughput" else run_anchor(a)
    res["env"] = common.environment()
    print("->", common.write_json(a.out, {"benchmark": f"gpt_{a.mode}", "args": vars(a), "result": res}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
