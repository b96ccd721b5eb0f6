"""Memory over a long run: 1000 ddp_scratch train steps of the MLP 784-1024-1024-10, one process.

  python benchmarks/bench_memory.py [--steps 1000 --every 100]

Every `every` steps it records the resident set size (RSS) and its anonymous and file-backed parts
(/proc/self/status). A leak grows the anonymous part; the file-backed part (library pages) can move
on its own where the kernel reclaims cold pages (e.g. DAMON), so "flat" is judged on the anonymous
part: at most --tolerance-mib of growth over the second half of the run. (On a busy machine glibc's
heap was seen to settle up to ~3 MiB higher during the first few hundred steps, then stay flat for
thousands: thread timing changes the order of OpenBLAS's and NumPy's allocations. A leak keeps
growing.) Then, with
tracemalloc on (NumPy reports its array buffers to it, so a leaked array shows to the byte), it
runs `every` more steps and records the change in live bytes and the largest transient allocation
inside one step (the temporaries the hot path creates and frees). Flat RSS after the first
samples and no change in live bytes mean no per-step growth. Batches cycle through 8 preallocated synthetic ones (data loading is
not what is measured).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

MiB = 2.0 ** 20


def parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=100, help="steps before the first sample")
    ap.add_argument("--tolerance-mib", type=float, default=4.0,
                    help="largest growth of anonymous RSS over the second half of the run that counts as "
                         "flat (the allocator settles in the first steps; traced bytes must grow < 64 KiB)")
    ap.add_argument("--out", default="memory.json")
    return ap.parse_args()


def main():
    a = parse()
    common.set_threads(a.threads)
    import tracemalloc

    import numpy as np
    from ddp_scratch.nn.mlp import MLP
    from ddp_scratch.nn.optim import SGD
    rss0 = common.rss_bytes()
    model = MLP(784, 10, [1024, 1024], "relu", dtype="float32", seed=0)
    opt = SGD(model.space, 0.01, momentum=0.9)
    space = model.space
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((a.batch, 784), dtype=np.float32), rng.integers(0, 10, a.batch))
               for _ in range(8)]

    def step(i):
        x, t = batches[i % len(batches)]
        space.zero_grad()
        model.loss(x, t, 1.0 / a.batch)
        model.backward()
        space.finish_grads()
        opt.step()

    # 1. RSS over the run (tracemalloc off: its own tables would count in RSS)
    def sample(i):
        r = common.rss_parts()
        return {"step": i, "rss_mib": r["VmRSS"] / MiB, "anon_mib": r.get("RssAnon", 0) / MiB,
                "file_mib": r.get("RssFile", 0) / MiB}

    for i in range(a.warmup):                # allocates the workspaces, lets malloc settle
        step(i)
    step(0)
    samples = [sample(1)]
    for i in range(2, a.steps + 1):
        step(i)
        if i % a.every == 0:
            samples.append(sample(i))
    # 2. then tracemalloc (NumPy reports its buffers to it): live bytes after `every` more steps,
    #    and the largest transient allocation inside a step
    tracemalloc.start()
    step(0)
    live0, _ = tracemalloc.get_traced_memory()
    transient = 0
    for i in range(a.every):
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        step(i)
        transient = max(transient, tracemalloc.get_traced_memory()[1] - before)
    live1, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    first, mid, last = samples[0], samples[len(samples) // 2], samples[-1]
    growth_rss = last["rss_mib"] - first["rss_mib"]
    late_rss = last["rss_mib"] - mid["rss_mib"]      # after the allocator has settled
    growth_anon = last["anon_mib"] - first["anon_mib"]
    late_anon = last["anon_mib"] - mid["anon_mib"]
    traced = (live1 - live0) / MiB
    out = {"benchmark": "memory", "steps": a.steps, "warmup": a.warmup, "every": a.every, "batch": a.batch,
           "threads": a.threads,
           "env": common.environment(), "rss_before_model_mib": rss0 / MiB,
           "model_state_mib": (space.params.nbytes + space.grads_full.nbytes + 2 * opt.p.nbytes) / MiB,
           "samples": samples, "rss_growth_mib": growth_rss, "rss_growth_second_half_mib": late_rss,
           "anon_growth_mib": growth_anon, "anon_growth_second_half_mib": late_anon,
           "traced_steps": a.every, "traced_growth_mib": traced, "max_transient_per_step_kib": transient / 1024,
           "tolerance_mib": a.tolerance_mib,
           "flat": late_anon <= a.tolerance_mib and traced <= 64 / 1024}
    path = common.write_json(a.out, out)
    print(f"memory: {a.steps} train steps after {a.warmup} warm-up steps, MLP 784-1024-1024-10 float32, "
          f"batch {a.batch}")
    print(f"  {'step':>6s} {'RSS MiB':>9s} {'anon MiB':>9s} {'file MiB':>9s}")
    for s in samples:
        print(f"  {s['step']:6d} {s['rss_mib']:9.2f} {s['anon_mib']:9.2f} {s['file_mib']:9.2f}")
    print(f"  growth step {first['step']} -> {last['step']}: RSS {growth_rss:+.2f} MiB, anonymous {growth_anon:+.2f} MiB "
          f"(step {mid['step']} -> {last['step']}: {late_rss:+.2f} / {late_anon:+.2f} MiB); live traced bytes over "
          f"{a.every} more steps {traced * 1024:+.1f} KiB; largest transient allocation in a step "
          f"{transient / 1024:.0f} KiB -> {'flat' if out['flat'] else 'GROWS'}")
    print(f"  -> {os.path.relpath(path)}")
    return 0 if out["flat"] else 1


if __name__ == "__main__":
    sys.exit(main())
