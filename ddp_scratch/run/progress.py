"""The rank-0 progress display of a training run."""
import sys
import time


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
