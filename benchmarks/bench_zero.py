"""ZeRO-1 against the plain all-reduce: optimizer state per rank and step time, on N ranks.

  mpiexec -n 2 python benchmarks/bench_zero.py [--hidden 1024,1024 --batch 256 --steps 20 --windows 5]

Two trainers in one process per rank, optim.zero 0 and 1 (AdamW, float32, the MLP of
bench_mlp.py on synthetic data), stepped in alternating windows so both see the same machine.
Prints, on rank 0, the optimizer state each rank holds (bytes: measured from the arrays, and the
largest rank's for ZeRO), and the median step time with its communication part (all-reduce, or
reduce-scatter + statistics + all-gather). Nothing is written.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (results/ and the machine's description)

from ddp_scratch.config import load_config  # noqa: E402
from ddp_scratch.parallel.world import Comm  # noqa: E402
from ddp_scratch.run.trainer import Options, Trainer  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", default="1024,1024")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--windows", type=int, default=5)
    a = ap.parse_args()
    comm = Comm(timeout_s=600)
    sides = {}
    for zero in (0, 1):
        cfg = load_config(None, ["data.name=synthetic", "data.n_samples=4096", f"model.hidden=[{a.hidden}]",
                                 f"train.batch_size={a.batch}", "optim.name=adamw", "optim.lr=0.001",
                                 "logging.progress=false", f"optim.zero={zero}"])
        out = tempfile.mkdtemp(prefix="bench_zero")
        sides[zero] = Trainer(cfg, Options(out=out, quiet=True, signals=False), comm=comm)
    times = {0: [], 1: []}
    comm_s = {0: [], 1: []}
    for w in range(a.windows + 1):         # the first window warms up
        for zero, tr in sides.items():
            comm.barrier()
            t0, c = time.perf_counter(), 0.0
            for i in range(a.steps):
                _, _, m = tr.train_step(0, i % tr.spe)
                c += m
            if w:
                times[zero].append((time.perf_counter() - t0) / a.steps * 1e3)
                comm_s[zero].append(c / a.steps * 1e3)
    held = {z: comm.allgather(sum(int(v.nbytes) for k, v in tr.opt.state_dict().items() if k != "t"))
            for z, tr in sides.items()}
    if comm.rank == 0:
        n = sides[0].space.n_params
        print(f"MLP {a.hidden} on synthetic data, {n:,} float32 parameters, AdamW, global batch {a.batch}, "
              f"{comm.size} rank(s), {a.windows} alternating windows of {a.steps} steps")
        for z, name in ((0, "zero 0 (all-reduce)"), (1, "zero 1 (reduce-scatter, all-gather)")):
            print(f"  {name:38s} optimizer state {max(held[z]):>12,} B per rank (largest)   "
                  f"step {statistics.median(times[z]):7.2f} ms, of it communication {statistics.median(comm_s[z]):6.2f} ms")
        common.write_json("zero.json", {
            "env": common.environment(), "model": f"MLP {a.hidden}", "n_params": n, "world_size": comm.size,
            "global_batch": a.batch, "windows": a.windows, "steps_per_window": a.steps,
            "sides": {str(z): {"optim_state_bytes_per_rank": max(held[z]), "optim_state_bytes_by_rank": held[z],
                               "step_ms": statistics.median(times[z]), "comm_ms": statistics.median(comm_s[z])}
                      for z in (0, 1)}})


if __name__ == "__main__":
    main()
