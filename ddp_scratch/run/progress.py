"""What a person sees of a run on rank 0: the start-up lines, one progress display, the last line.

On a terminal the progress is one live bar, redrawn in place; in a log file (SLURM, CI, `| tee`)
it is about ten plain lines per run, whatever train.log_every says. Both show the latest training
loss and, once there is one, the latest validation result, and an ETA computed from the steps
this process ran (so it is right after a resume too).
"""
import os
import sys
import time

from .. import backend as B


def _columns():
    """The terminal's width (COLUMNS when a launcher passed it on), 100 if unknown."""
    try:
        return max(20, int(os.environ.get("COLUMNS", "")))
    except ValueError:
        import shutil
        return shutil.get_terminal_size((100, 24)).columns


def _plural(n, word):
    text = f"{n:,.0f}" if n == int(n) else f"{n:,.2f}"
    return f"{text} {word}" + ("" if n == 1 else "s")


def _si(n):
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}"


def _duration(s):
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def headline(task_metrics: dict):
    """(name, value) of the metric that matters for the task, from a summary."""
    for key, name in (("exact_match", "test_exact_match"), ("test_accuracy", "test_accuracy"),
                      ("val_exact_match", "val_exact_match"), ("val_loss", "val_loss"),
                      ("val_accuracy", "val_accuracy"), ("train_loss", "train_loss")):
        if task_metrics.get(key) is not None:
            return name, task_metrics[key]
    return None, None


def startup_text(tr):
    """What is about to happen, said once before the first step (rank 0) of trainer `tr`."""
    cfg, comm, t = tr.cfg, tr.comm, tr.cfg.train
    nodes = sorted(set(tr.hosts))
    where = (f"{comm.size} rank{'s' * (comm.size > 1)} on {len(nodes)} node{'s' * (len(nodes) > 1)} "
             f"({', '.join(nodes[:4])}{', ...' if len(nodes) > 4 else ''})")
    threads = os.environ.get("OMP_NUM_THREADS", "?")
    dev = f"{B.name} on {B.device_name()}" + ("" if B.on_gpu() else " (CPU)")
    lo, hi = t.batch_size // comm.size, -(-t.batch_size // comm.size)
    per = f"{lo}" if lo == hi else f"{lo}-{hi}"
    has_val = bool(getattr(tr.task, "evals", {}).get("val") is not None or
                   len(getattr(tr.task, "dev", {}).get("val", ((), ()))[1]))
    ev = ("validation " + (f"every {_plural(t.eval_every, 'step')}" if t.eval_every else "every epoch")
          if has_val else "no validation split")
    epochs = tr.total_steps / tr.spe
    model = getattr(tr.model, "describe", lambda: cfg.model.name)()
    lines = [
        f"ddp_scratch: {where}; {dev}, {threads} thread(s) per rank",
        f"  model: {model}, {tr.space.n_params:,} parameters, {t.dtype}; "
        f"optimizer {cfg.optim.name}, lr {cfg.optim.lr:g} ({cfg.optim.schedule})"
        + (f", ZeRO-1 (state sharded over {comm.size} ranks)" if getattr(tr, "zero", None) else ""),
        f"  data:  {tr.task.describe()}",
        f"  batch: {t.batch_size} global = {per} per rank; {_plural(tr.total_steps, 'step')} = "
        + _plural(epochs, "epoch") + f" of {_plural(tr.spe, 'step')}; {ev}",
    ]
    lines.append(f"  comm:  {comm_text(cfg.comm, comm.size)}")
    lines.append(f"  out:   {tr.opts.out}" + (f" (resuming from step {tr.resumed_from:,})" if tr.resumed_from else ""))
    return "\n".join(lines)


def comm_text(c, size):
    """How the gradients are summed, in words (start-up text)."""
    if c.backend == "nccl":
        how = "NCCL all-reduce on the GPUs"
    elif c.algorithm == "ring":
        how = "ring all-reduce (hand-written)" + (
            f", {c.compress} on the wire" + (" with error feedback" if c.error_feedback else "")
            if c.compress != "none" else "")
    else:
        how = "MPI_Allreduce"
    if c.overlap:
        how += f", overlapped with backward in {c.bucket_mb:g} MiB buckets"
    if c.accumulate > 1:
        how += f", every {c.accumulate} micro-batches"
    if size == 1:
        return "none (1 rank: no gradient is exchanged" + (", so the comm settings have no effect)"
                                                            if c.algorithm != "mpi" or c.overlap else ")")
    return how


def final_line(s, out):
    """The run's last line: status, steps, the task's headline metric, throughput, where it went."""
    unit = "tokens" if s.get("tokens_per_s") is not None else "samples"
    rate = s.get(f"{unit}_per_s") or 0.0
    parts = [f"{s['status']}: step {s['steps']}/{s.get('total_steps', s['steps'])}"]
    name, value = headline(s)
    over = f" ({s['train_loss_over']})" if s.get("train_loss_over") else ""
    if s.get("train_loss") is not None and name != "train_loss":
        parts.append(f"train_loss {s['train_loss']:.4g}{over}")
    if name is not None:
        parts.append(f"{name} {value:.4g}" + (over if name == "train_loss" else ""))
    if rate:
        parts.append(f"{_si(rate)} {unit}/s")
    if s.get("skipped_steps"):      # train.nonfinite: skip: a run that skipped most steps must not look healthy
        parts.append(f"{_plural(s['skipped_steps'], 'step')} SKIPPED (non-finite)")
    return ", ".join(parts) + f" -> {out}/summary.json"


class Progress:
    """One progress display (rank 0): a live bar on a terminal, ~10 plain lines otherwise."""

    def __init__(self, total, start=0, enabled=True, stream=None, lines=10, unit="samples"):
        self.stream = stream or sys.stderr
        self.total, self.start, self.enabled, self.unit = total, start, enabled, unit
        self.tty = enabled and (self.stream.isatty() or os.environ.get("DDP_PROGRESS") == "tty")
        remaining = max(1, total - start)
        self.every = max(1, -(-remaining // lines))
        self.t0 = time.perf_counter()
        self.last_draw = 0.0
        self.val = ""
        self.width = _columns()

    def set_validation(self, rec):
        keys = [k for k in ("val_loss", "val_accuracy", "val_exact_match") if rec.get(k) is not None]
        self.val = " ".join(f"{k} {rec[k]:.4g}" for k in keys) + (f" (at step {rec['step']})" if keys else "")

    def _eta(self, step):
        done = step - self.start
        el = time.perf_counter() - self.t0
        return el / done * (self.total - step) if done > 0 else None

    def update(self, step, epoch, loss, rate):
        if not self.enabled:
            return
        now = time.perf_counter()
        last = step == self.total
        if self.tty:
            if not last and now - self.last_draw < 0.1:      # ~10 redraws a second at most
                return
            self.last_draw = now
            frac = step / max(1, self.total)
            eta = self._eta(step)
            bar = "#" * int(24 * frac)
            text = (f"[{bar:<24}] {step}/{self.total} ep {epoch:.2f} loss {loss:.4g}"
                    + (f" | {self.val}" if self.val else "") + f" | {_si(rate)} {self.unit}/s"
                    + (f" | eta {_duration(eta)}" if eta is not None else ""))
            self.stream.write("\r" + text[:self.width - 1] + "\x1b[K")
        else:
            if not (last or (step - self.start) % self.every == 0):
                return
            eta = self._eta(step)
            self.stream.write(f"step {step}/{self.total} (epoch {epoch:.2f}): loss {loss:.4g}"
                              + (f", {self.val}" if self.val else "") + f", {_si(rate)} {self.unit}/s"
                              + (f", eta {_duration(eta)}" if eta is not None and not last else "") + "\n")
        self.stream.flush()

    def close(self):
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
