"""Timers, throughput and rank-0 progress display."""
import os
import sys
import time

import numpy as np

from . import backend as B


class StepTimes:
    """Per-step compute / communication / total seconds (device synchronised before reading)."""

    def __init__(self, capacity):
        self.a = np.zeros((max(1, capacity), 3))
        self.n = 0

    def add(self, compute, comm, total):
        if self.n < len(self.a):
            self.a[self.n] = (compute, comm, total)
            self.n += 1

    def rows(self, skip=0):
        return self.a[min(skip, max(0, self.n - 1)):self.n]


def now():
    B.synchronize()
    return time.perf_counter()


def peak_rss_bytes():
    """Peak resident set size of this process (Linux reports KiB)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class Progress:
    """A one-line progress bar on a terminal, periodic plain lines otherwise (logs, SLURM)."""

    def __init__(self, total, enabled=True, every=10, stream=sys.stderr):
        self.total, self.enabled, self.every, self.stream = total, enabled, every, stream
        self.tty = enabled and stream.isatty()
        if not self.tty:   # logs (SLURM, CI): about ten lines per run, not one per log_every
            self.every = max(every, total // 10)
        self.t0 = time.perf_counter()

    def update(self, step, text=""):
        if not self.enabled or not (self.tty or step % self.every == 0 or step == self.total):
            return
        frac = step / max(1, self.total)
        el = time.perf_counter() - self.t0
        eta = el / frac - el if frac > 0 else 0.0
        if self.tty:
            bar = "#" * int(30 * frac)
            self.stream.write(f"\r[{bar:<30}] {step}/{self.total} {text} eta {eta:5.0f}s ")
        else:
            self.stream.write(f"step {step}/{self.total} {text} eta {eta:.0f}s\n")
        self.stream.flush()

    def close(self):
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
