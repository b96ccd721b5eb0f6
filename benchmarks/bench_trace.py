"""What logging.trace costs: Trainer.train_step with the trace off and on, one process, in
alternating windows (the same machine state for both sides), and what it records per step.

  python benchmarks/bench_trace.py [--hidden 128,64 --batch 64 --steps 200 --windows 7]

Default: the MLP of experiments/mlp_digits.yaml (64-128-64-10), whose ~0.3 ms step makes the
trace's fixed per-step cost (about a dozen perf_counter calls and array writes) most visible.
Prints microseconds per step for both, their difference and ratio (the median over the windows),
and the events per step. Nothing is written.
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


def trainer(a, trace):
    cfg = load_config(os.path.join(common.ROOT, "experiments", "mlp_digits.yaml"), [
        f"model.hidden=[{a.hidden}]", f"train.batch_size={a.batch}", "logging.progress=false",
        f"logging.trace={'true' if trace else 'false'}"])
    return Trainer(cfg, Options(out=tempfile.mkdtemp(prefix="bench_trace"), quiet=True, signals=False),
                   comm=Comm(serial=True))


def window(tr, steps):
    t0 = time.perf_counter()
    for i in range(steps):
        tr.train_step(0, i % tr.spe)
    return (time.perf_counter() - t0) / steps * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", default="128,64")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--windows", type=int, default=7)
    a = ap.parse_args()
    off, on = trainer(a, False), trainer(a, True)
    window(off, 20), window(on, 20)          # warm-up
    n0 = on.trace.n
    t_off, t_on = [], []
    for _ in range(a.windows):
        t_off.append(window(off, a.steps))
        t_on.append(window(on, a.steps))
    per_step = (on.trace.n - n0) / (a.windows * a.steps)
    m_off, m_on = statistics.median(t_off), statistics.median(t_on)
    print(f"MLP {a.hidden}, batch {a.batch}, {a.windows} alternating windows of {a.steps} steps, one process")
    print(f"  trace off: {m_off:8.1f} us/step   (windows {min(t_off):.1f}..{max(t_off):.1f})")
    print(f"  trace on:  {m_on:8.1f} us/step   (windows {min(t_on):.1f}..{max(t_on):.1f})")
    print(f"  overhead:  {m_on - m_off:+8.1f} us/step ({m_on / m_off - 1:+.1%}), {per_step:.0f} events per step "
          f"(the step span is the loop's, not counted here)")
    # the cost of one event on its own (a phase mark: perf_counter, four array writes), which the
    # step-time difference above hides in this machine's noise when it is busy
    from ddp_scratch.run.trace import BATCH, Tracer
    tr, n = Tracer(0, capacity=100_000), 100_000
    t0 = time.perf_counter()
    for _ in range(n):
        tr.mark(BATCH)
    mark_us = (time.perf_counter() - t0) / n * 1e6
    print(f"  one event: {mark_us:.2f} us, so {(per_step + 1) * mark_us:.1f} us per step of {per_step + 1:.0f} "
          f"events ({(per_step + 1) * mark_us / m_off:.1%} of this step)")
    common.write_json("trace.json", {
        "env": common.environment(), "model": f"MLP {a.hidden}", "batch": a.batch, "windows": a.windows,
        "steps_per_window": a.steps, "off_us_per_step": m_off, "on_us_per_step": m_on,
        "events_per_step": per_step + 1, "one_event_us": mark_us})


if __name__ == "__main__":
    main()
