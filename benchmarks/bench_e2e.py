"""End to end: what a user runs. `launch.py train CONFIG` (the real trainer: data loading,
evaluation, checkpoint, summary) against benchmarks/torch_train.py (a plain PyTorch script doing
the same work from the same config), both timed as whole commands, 1 process and N ranks under
mpiexec (torch: DDP over gloo). Rounds interleave the two sides (the order alternates), each
round gives a ratio (torch wall / ours wall: > 1 means ddp_scratch is faster), and the headline
is the median of those ratios. Both sides' test accuracies are reported so that a fast wrong
run cannot pass for a fast right one.

    python benchmarks/bench_e2e.py [--ranks 1 2] [--rounds 3] [--set k=v ...]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import common

CONFIG = os.path.join(common.HERE, "e2e_fashion.yaml")


def parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=CONFIG)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for an idle machine before each run")
    ap.add_argument("--out", default="e2e.json")
    a = ap.parse_args()
    if a.rounds < 1 or any(r < 1 for r in a.ranks):
        ap.error("--rounds and --ranks must be >= 1")
    return a


def mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else "mpiexec"


def command(side, ranks, config, out, overrides):
    sets = [x for kv in overrides for x in ("--set", kv)]
    if side == "ddp_scratch":
        cmd = [sys.executable, os.path.join(common.ROOT, "launch.py"), "train", config, "--out", out,
               "--overwrite", "--quiet", *sets]
    else:
        cmd = [sys.executable, os.path.join(common.HERE, "torch_train.py"), config, "--out", out, *sets]
    return [mpiexec(), "-n", str(ranks), *cmd] if ranks > 1 else cmd


def run_once(side, ranks, a, scratch):
    out = os.path.join(scratch, f"{side}-{ranks}")
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    r = subprocess.run(command(side, ranks, a.config, out, a.overrides), capture_output=True, text=True,
                       cwd=common.ROOT)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{side} with {ranks} rank(s) failed (exit {r.returncode}):\n{r.stderr[-2000:]}")
    with open(os.path.join(out, "summary.json")) as f:
        s = json.load(f)
    steps = s.get("steps", s.get("step"))
    # the training steps alone (ddp_scratch's summary calls them wall_s)
    train_s = s["train_s"] if side == "torch" else s["wall_s"]
    return {"wall_s": wall, "train_s": train_s, "steps": steps, "test_accuracy": s["test_accuracy"]}


def main():
    a = parse()
    scratch = tempfile.mkdtemp(prefix="bench_e2e_")
    res = {"config": os.path.relpath(a.config, common.ROOT), "overrides": a.overrides,
           "env": common.environment(), "points": {}}
    try:
        for ranks in a.ranks:
            rounds = []
            for k in range(a.rounds):
                order = ["ddp_scratch", "torch"] if k % 2 == 0 else ["torch", "ddp_scratch"]
                got = {}
                for side in order:
                    if not a.no_wait:
                        common.wait_for_idle(quiet=True)
                    got[side] = run_once(side, ranks, a, scratch)
                got["ratio"] = got["torch"]["wall_s"] / got["ddp_scratch"]["wall_s"]
                got["train_ratio"] = got["torch"]["train_s"] / got["ddp_scratch"]["train_s"]
                rounds.append(got)
                print(f"{ranks} rank(s), round {k + 1}: ddp_scratch {got['ddp_scratch']['wall_s']:.2f} s "
                      f"(acc {got['ddp_scratch']['test_accuracy']:.4f}), torch {got['torch']['wall_s']:.2f} s "
                      f"(acc {got['torch']['test_accuracy']:.4f}): {got['ratio']:.3f}x whole command, "
                      f"{got['train_ratio']:.3f}x training loop", flush=True)
            res["points"][str(ranks)] = {
                "rounds": rounds,
                "ratio_median": statistics.median(r["ratio"] for r in rounds),
                "train_ratio_median": statistics.median(r["train_ratio"] for r in rounds),
                "steps": rounds[0]["ddp_scratch"]["steps"]}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for ranks, p in res["points"].items():
        print(f"{ranks} rank(s): median {p['ratio_median']:.3f}x torch (whole command), "
              f"{p['train_ratio_median']:.3f}x (training loop), {p['steps']} steps")
    print("->", common.write_json(a.out, res))


if __name__ == "__main__":
    main()
