"""The one training loop: forward, backward, all-reduce, step, log, checkpoint.

Model- and communication-agnostic: the model exposes loss()/backward() over a flat ParamSpace,
the task hands out rank-local batches, and Comm hides MPI. Per-step statistics (loss, accuracy,
non-finite flag, stop request) ride in extra slots of the gradient buffer, so agreeing on them
costs no extra round trip.
"""
from dataclasses import dataclass
import json
import math
import os
import signal
import sys
import time

import numpy as np

from .. import backend as B
from ..config import config_hash
from ..data.tasks import build_task
from ..errors import CheckpointError, ConfigError, UserError
from ..fsutil import atomic_write_text
from ..nn.flat import EXTRA_CORRECT, EXTRA_ITEMS, EXTRA_LOSS, EXTRA_NONFINITE, EXTRA_STOP
from ..nn.optim import build_optimizer, lr_at
from ..nn.registry import build_model
from ..parallel.world import Comm
from ..study.metrics import StepTimes, energy_meter, now, peak_rss_bytes, scaling_metrics
from . import checkpoint as ckpt
from .progress import Progress

EXIT_PREEMPTED = 75     # EX_TEMPFAIL: checkpoint written after a stop signal; requeue and --resume
EXIT_NONFINITE = 4
STOP_SIGNALS = ("SIGUSR1", "SIGUSR2", "SIGTERM")


class Stopped(Exception):
    """Raised after a clean checkpoint on a stop signal; carries the exit status."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


class RankDivergence(UserError):
    exit_code = 5
    collective = True     # every rank compares the same gathered checksums


class NonFinite(UserError):
    exit_code = EXIT_NONFINITE
    collective = True     # decided from all-reduced values: identical on every rank


@dataclass
class Options:
    out: str = "out"
    resume: bool = False
    overwrite: bool = False
    stop_at_step: int = 0
    quiet: bool = False


class Trainer:
    def __init__(self, cfg, opts: Options, comm: Comm | None = None):
        self.cfg, self.opts = cfg, opts
        self.comm = comm or Comm(cfg.comm.timeout_s)
        self.stop_requested = False      # agreed by all ranks
        self.signal_seen = False         # this rank got a stop signal
        self._install_signals()          # early: a preemption during start-up must not kill us
        self.ckpt_path = os.path.join(opts.out, "checkpoint.npz")
        self.summary_path = os.path.join(opts.out, "summary.json")
        # Every rank reaches each agreement, so no rank enters a collective alone; the lowest
        # failing rank reports, the others leave quietly. First the local set-up (data loading at
        # each rank's own pace: the agreement gets a generous limit, not comm.timeout_s), then the
        # collective one (NCCL, identical starting parameters): a rank that failed the first must
        # not leave the others inside a broadcast while it waits in the agreement.
        for setup, what in ((self._setup, "start-up agreement"), (self._setup_shared, "communication set-up agreement")):
            err = None
            try:
                setup()
            except UserError as e:
                err = e
            self._agree(err, what)

    def _agree(self, err, what):
        failed = self.comm.allgather(err is not None, what, max(self.comm.timeout_s, 600.0))
        if any(failed):
            if err is not None and failed.index(True) == self.comm.rank:
                raise err
            raise SystemExit(2)

    # ------------------------------------------------------------------ set-up
    def _setup(self):
        cfg, comm = self.cfg, self.comm
        B.use(cfg.backend, device=comm.local_rank)
        if cfg.train.batch_size < comm.size:
            raise ConfigError(f"train.batch_size: the global batch ({cfg.train.batch_size}) must be at least "
                              f"the number of ranks ({comm.size})")
        if os.path.exists(self.ckpt_path) and not (self.opts.resume or self.opts.overwrite):
            raise UserError(f"{self.ckpt_path} already exists: pass --resume to continue it or "
                            "--overwrite to start a new run over it")
        self.task = build_task(cfg, comm.rank, comm.size)
        self.model = build_model(cfg, self.task.d_in, self.task.n_out, cfg.train.seed)
        self.space = self.model.space
        self.opt = build_optimizer(cfg.optim, self.space)
        self.spe = self.task.steps_per_epoch
        t = cfg.train
        self.total_steps = t.epochs * self.spe
        if t.max_steps:
            self.total_steps = min(self.total_steps, t.max_steps) if t.epochs else t.max_steps
        self.step = 0
        self.fp = cfg.fingerprint()
        if self.opts.resume and os.path.exists(self.ckpt_path):
            self._load_checkpoint()
        self.resumed_from = self.step

    def _setup_shared(self):
        """The collective part of the set-up: NCCL, identical starting parameters, the reducer."""
        c = self.cfg.comm
        if c.backend == "nccl":
            self.comm.use_nccl()
        self.comm.broadcast_(self.space.params, what="initial parameter broadcast")
        self.overlap = self.comm.overlapped(self.space, c.bucket_mb, c.first_bucket_mb) if c.overlap else None

    def _load_checkpoint(self):
        arrays, meta = ckpt.load(self.ckpt_path)
        diffs = ckpt.diff_fingerprints(meta.get("fingerprint", {}), self.fp)
        if diffs:
            raise CheckpointError(f"checkpoint {self.ckpt_path} does not match the config: {diffs[0]}"
                                  + (f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""))
        if meta.get("layout") != self.space.layout() or arrays["params"].shape != self.space.params.shape:
            raise CheckpointError(f"checkpoint {self.ckpt_path} holds parameters of another model layout")
        self.space.params[...] = B.xp.asarray(arrays["params"])
        try:
            self.opt.load_state_dict({k[4:]: v for k, v in arrays.items() if k.startswith("opt.")} | {"t": meta["opt_t"]})
        except KeyError as e:
            raise CheckpointError(f"checkpoint {self.ckpt_path} lacks optimizer state {e}") from None
        self.step = int(meta["step"])

    def save_checkpoint(self):
        if self.comm.rank != 0:
            return
        arrays = {"params": B.to_numpy(self.space.params)}
        for k, v in self.opt.state_dict().items():
            if k != "t":
                arrays[f"opt.{k}"] = B.to_numpy(v)
        epoch, i = divmod(self.step, self.spe)
        meta = {"step": self.step, "epoch": epoch, "step_in_epoch": i, "opt_t": self.opt.t,
                "fingerprint": self.fp, "config_hash": config_hash(self.fp), "layout": self.space.layout(),
                "config": self.cfg.to_dict(), "world_size": self.comm.size,
                "rng": "stateless: data order from (train.seed, epoch), dropout from (train.seed, step)"}
        if getattr(self.task, "vocab", None):      # text tasks: the tokenizer, for `launch.py sample`
            meta["vocab"] = self.task.vocab
        ckpt.save(self.ckpt_path, arrays, meta)

    # ------------------------------------------------------------------ signals
    def _install_signals(self):
        def handler(signum, frame):
            # Only noted here: the ranks agree on stopping through the next all-reduce, since a
            # signal may reach the ranks during different steps (or reach only some of them).
            self.signal_seen = True
            self.signum = signum
        self.signum, self.previous_handlers = None, {}
        for name in STOP_SIGNALS:
            if hasattr(signal, name):
                num = getattr(signal, name)
                self.previous_handlers[num] = signal.signal(num, handler)

    # ------------------------------------------------------------------ loop
    def train_step(self, epoch, i):
        """One optimizer step; returns (compute_s, comm_s, global loss, global correct, items)."""
        space, ex, t = self.space, self.space.extras, self.cfg.train
        t0 = time.perf_counter()
        x, y, n_items = self.task.batch(epoch, i)
        self.n_items = n_items
        space.zero_grad()
        # Gradient accumulation (like DDP's no_sync): the rank's rows in K micro-batches, every
        # one scaled by the same 1/global_items, summed locally, communicated once.
        k_micro, rows = self.cfg.comm.accumulate, len(y)
        loss = correct = 0
        for k in range(k_micro):
            lo, hi = rows * k // k_micro, rows * (k + 1) // k_micro
            if self.overlap is not None:
                self.overlap.begin(last_micro_step=k == k_micro - 1)
            if hi > lo:
                if hasattr(self.model, "set_step"):   # dropout masks keyed by (step, global row)
                    self.model.set_step(self.step, getattr(self.task, "lo", 0) + lo)
                lk, ck = self.model.loss(x[lo:hi], y[lo:hi], 1.0 / n_items)
                self.model.backward()
                loss, correct = loss + lk, correct + ck
        space.finish_grads()
        ex[EXTRA_LOSS], ex[EXTRA_CORRECT], ex[EXTRA_ITEMS] = loss, correct, y.size
        ex[EXTRA_NONFINITE] = 0.0 if math.isfinite(loss) else 1.0
        ex[EXTRA_STOP] = 1.0 if self.signal_seen else 0.0
        t1 = now()
        if self.overlap is not None:
            self.comm.all_reduce_overlapped_finish(self.overlap)
        else:
            self.comm.all_reduce_gradients(space.grads_full)
        t2 = now()
        g = space.grads
        gnorm = math.sqrt(float(B.xp.dot(g, g)))
        stats = B.to_numpy(ex).astype(np.float64)
        if stats[EXTRA_STOP] > 0:
            self.stop_requested = True
        if stats[EXTRA_NONFINITE] > 0 or not math.isfinite(gnorm):
            return self._nonfinite(stats, gnorm), t1 - t0, t2 - t1
        self.skips = 0
        if t.grad_clip and gnorm > t.grad_clip:
            g *= t.grad_clip / (gnorm + 1e-6)
        self.opt.step(lr_at(self.cfg.optim, self.step, self.total_steps))
        self.gnorm = gnorm
        return stats, t1 - t0, t2 - t1

    def _nonfinite(self, stats, gnorm):
        t = self.cfg.train
        what = "loss" if stats[EXTRA_NONFINITE] > 0 else "gradient norm"
        if t.nonfinite == "skip":
            self.skipped += 1
            self.skips += 1
            if self.skips <= t.max_skips:
                return stats
            raise NonFinite(f"non-finite {what} at step {self.step}: {self.skips} consecutive steps skipped "
                            f"(train.max_skips={t.max_skips})")
        layer = next((p.name for p in self.space.plist if not bool(B.xp.isfinite(p.grad).all())), None)
        where = f"; first non-finite gradient in {layer}" if layer else ""
        raise NonFinite(f"non-finite {what} at step {self.step}{where} (train.nonfinite=abort; "
                        "try a lower optim.lr or train.nonfinite=skip)")

    def run(self):
        cfg, comm, opts = self.cfg, self.comm, self.opts
        if comm.rank == 0:
            os.makedirs(opts.out, exist_ok=True)
        self.skipped = self.skips = 0
        self.gnorm = 0.0
        self.wandb = _wandb_init(cfg, opts.out) if comm.rank == 0 and cfg.logging.wandb else None
        times = StepTimes(self.total_steps - self.step)
        prog = Progress(self.total_steps, enabled=comm.rank == 0 and cfg.logging.progress and not opts.quiet,
                        every=cfg.train.log_every)
        history, ep_loss, ep_correct, ep_items, ep_steps = [], 0.0, 0.0, 0.0, 0
        train_s, status = 0.0, "completed"
        self.check_consistency("start")
        self.energy = energy_meter(cfg, comm)
        epoch, i = divmod(self.step, self.spe)
        while self.step < self.total_steps:
            t0 = time.perf_counter()
            with np.errstate(over="ignore", invalid="ignore"):   # non-finite values are handled by policy
                stats, c_s, m_s = self.train_step(epoch, i)
            B.synchronize()              # the optimizer's kernels belong to this step's time
            dt = time.perf_counter() - t0
            train_s += dt
            times.add(c_s, m_s, dt)
            if not self.skips:      # a skipped step contributes nothing, not even to the averages
                ep_loss += stats[EXTRA_LOSS]
                ep_correct += stats[EXTRA_CORRECT]
                ep_items += self.n_items     # global count of scored targets (the loss normaliser)
                ep_steps += 1
            self.step += 1
            i += 1
            comm.step = self.step
            prog.update(self.step, f"loss {stats[EXTRA_LOSS]:.4f}")
            t = cfg.train
            end_of_epoch = i == self.spe
            if end_of_epoch or (t.eval_every and self.step % t.eval_every == 0) or self.step == self.total_steps:
                rec = {"step": self.step, "epoch": epoch + (i / self.spe),
                       "train_loss": ep_loss / max(1, ep_steps),
                       "train_accuracy": ep_correct / max(1.0, ep_items), "lr": lr_at(cfg.optim, self.step - 1, self.total_steps),
                       "samples_per_s": self._rate(times)}
                rec.update({f"val_{k}": v for k, v in self.task.evaluate(self.model, "val", comm).items()})
                history.append(rec)
                self._log(rec)
            if end_of_epoch:
                epoch, i = epoch + 1, 0
                ep_loss = ep_correct = ep_items = 0.0
                ep_steps = 0
            if t.check_every and self.step % t.check_every == 0:
                self.check_consistency(f"step {self.step}")
            if t.checkpoint_every and self.step % t.checkpoint_every == 0:
                self.save_checkpoint()
            if opts.stop_at_step and self.step >= opts.stop_at_step and self.step < self.total_steps:
                status = "stopped"
                break
            if self.stop_requested and self.step < self.total_steps:
                status = "preempted"
                break
        prog.close()
        energy = self.energy.stop(flops=0.0, seconds=train_s) if self.energy else None
        self.save_checkpoint()
        summary = self._summary(history, times, train_s, status, energy)
        if comm.rank == 0:
            atomic_write_text(self.summary_path, json.dumps(summary, indent=2) + "\n")
            if self.wandb:
                self.wandb.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
                self.wandb.finish()
        if status == "preempted":
            e = Stopped(EXIT_PREEMPTED, f"stop signal: checkpoint written at step {self.step}; "
                        "requeue and run with --resume")
            e.signum = self.signum or signal.SIGUSR2      # a rank that saw none still stops
            e.previous_handler = self.previous_handlers.get(e.signum)   # e.g. submitit's requeue
            raise e
        return summary

    def check_consistency(self, when):
        """Cheap parameter checksum compared across ranks: catches silent divergence."""
        if self.comm.size == 1:
            return
        p = self.space.params
        local = (float(p.sum()), float(B.xp.dot(p[::97], p[::97])))
        allv = self.comm.allgather(local, f"parameter checksum ({when})")
        bad = [r for r, v in enumerate(allv) if v != allv[0]]
        if bad:
            raise RankDivergence(f"ranks diverged at {when}: parameters on rank(s) {bad} differ from rank 0 "
                               f"(checksums {allv[0]} vs {allv[bad[0]]})")

    def _rate(self, times):
        rows = times.rows()
        return float(self.task.items_per_step() * len(rows) / rows[:, 2].sum()) if len(rows) else 0.0

    def _log(self, rec):
        if self.comm.rank != 0:
            return
        if not self.opts.quiet:
            vals = " ".join(f"{k} {v:.4g}" for k, v in rec.items() if k not in ("step", "epoch"))
            print(f"epoch {rec['epoch']:.2f} step {rec['step']}: {vals}", file=sys.stderr, flush=True)
        if self.wandb:
            self.wandb.log(rec, step=rec["step"])

    def _summary(self, history, times, train_s, status, energy=None):
        cfg, comm = self.cfg, self.comm
        test = self.task.evaluate(self.model, "test", comm) if status == "completed" else {}
        rows = times.rows()
        steps_run = len(rows)
        items = self.task.items_per_step() * steps_run
        flops = self.model.flops_per_step(self.task.items_per_step()) * steps_run
        last = history[-1] if history else {}
        s = {
            "status": status, "world_size": comm.size, "backend": B.name, "device": B.device_name(),
            "dtype": cfg.train.dtype, "model": cfg.model.name, "data": cfg.data.name,
            "n_params": self.space.n_params, "steps": self.step, "steps_this_run": steps_run,
            "resumed_from_step": self.resumed_from, "epochs": self.step / self.spe,
            "global_batch": cfg.train.batch_size, "items_per_sample": getattr(self.task, "items_per_sample", 1),
            "train_loss": last.get("train_loss"), "val_loss": last.get("val_loss"),
            "val_accuracy": last.get("val_accuracy"),
            "test_loss": test.get("loss"), "test_accuracy": test.get("accuracy"),
            f"{self.task.items}_per_s": items / train_s if train_s else 0.0,
            "flops_per_step": self.model.flops_per_step(self.task.items_per_step()),
            "flops_per_s": flops / train_s if train_s else 0.0,
            "wall_s": train_s, "comm_s": float(rows[:, 1].sum()), "compute_s": float(rows[:, 0].sum()),
            "skipped_steps": self.skipped, "threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0),
            "peak_rss_bytes": peak_rss_bytes(), "history": history, "config": cfg.to_dict(),
        }
        if self.task.items != "samples":
            s["samples_per_s"] = s[f"{self.task.items}_per_s"] / getattr(self.task, "items_per_sample", 1)
        s.update(getattr(self.task, "extra_summary", lambda m, c: {})(self.model, comm) if status == "completed" else {})
        s.update(getattr(self.model, "memory_report", lambda n: {})(self.task.items_per_step()))
        s.update(self._scaling_metrics(times, s, energy))
        return s

    def _scaling_metrics(self, times, s, energy):
        """Cross-rank timing split, memory, MFU and energy: collectives, so every rank calls this."""
        return scaling_metrics(self.comm, times.rows(skip=self.cfg.train.timing_skip), s, energy,
                               self.space.n_params, self.spe)


def _wandb_init(cfg, out):
    os.environ.setdefault("WANDB_MODE", cfg.logging.wandb_mode)
    os.environ.setdefault("WANDB_DIR", os.path.abspath(out))
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        import wandb
        return wandb.init(project=cfg.logging.wandb_project, config=cfg.to_dict(), dir=os.path.abspath(out))
    except Exception as e:   # logging must never take a training run down
        print(f"warning: wandb disabled ({type(e).__name__}: {e})", file=sys.stderr, flush=True)
        return None
