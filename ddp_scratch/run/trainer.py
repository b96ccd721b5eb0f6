"""The one training loop: forward, backward, all-reduce, step, log, checkpoint.

Model- and communication-agnostic: the model exposes loss()/backward() over a flat ParamSpace,
the task hands out rank-local batches, and Comm hides MPI. Per-step statistics (loss, accuracy,
non-finite flag, stop request) ride in extra slots of the gradient buffer, so agreeing on them
costs no extra round trip.

Size: a little over 400 lines, because the loop, its set-up and its agreements are one protocol
(every rank reaches every collective in the same order, whatever fails), and the trace
(logging.trace) marks the step's phases where they happen.
"""
from dataclasses import dataclass
import json
import math
import os
import platform
import signal
import sys
import time

import numpy as np

from .. import backend as B
from ..data.tasks import build_task, data_bytes
from ..errors import ConfigError, UserError
from ..fsutil import atomic_write_text
from ..nn import jit
from ..nn.flat import EXTRA_CORRECT, EXTRA_GNORM2, EXTRA_ITEMS, EXTRA_LOSS, EXTRA_STOP, N_EXTRAS
from ..nn.optim import build_optimizer, lr_at
from ..nn.registry import build_model, memory_estimate
from ..parallel.world import Comm
from ..parallel.zero import ZeroReducer
from ..study.metrics import StepTimes, energy_meter, now
from . import checkpoint as ckpt
from . import trace as T
from .preflight import check_memory, check_out_folder, lock_out_folder
from .progress import Progress, startup_text
from .summary import RunState, build_summary, summary_status, wandb_init

EXIT_PREEMPTED = 75     # EX_TEMPFAIL: checkpoint written after a stop signal; requeue and --resume
EXIT_INTERRUPTED = 130  # 128 + SIGINT: Ctrl-C, checkpoint written
EXIT_NONFINITE = 4
STOP_SIGNALS = ("SIGUSR1", "SIGUSR2", "SIGTERM", "SIGHUP", "SIGINT")
# A stop request rides in one slot of the all-reduced statistics: 1 per rank that saw a stop
# signal, INTERRUPT per rank that saw Ctrl-C (so the sum tells which, on every rank alike).
INTERRUPT = 65536.0


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
    stop_at_step: int | None = None     # >= 1 when given
    quiet: bool = False
    signals: bool = True      # stop signals checkpoint and stop the run (off for in-process probes)


class Trainer:
    def __init__(self, cfg, opts: Options, comm: Comm | None = None):
        self.cfg, self.opts = cfg, opts
        self.comm = comm or Comm(cfg.comm.timeout_s)
        self.stop_requested = False      # agreed by all ranks
        self.signal_seen = False         # this rank got a stop signal
        self.warned_unwritten = False    # a parameter no backward wrote: said once
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

    def _agree(self, err, what, timeout_s=None):
        """Every rank learns whether any failed; the lowest failing rank raises its error (marked
        as agreed: no abort needed), the others leave quietly with the same exit status."""
        failed = self.comm.allgather(err is not None, what, timeout_s or max(self.comm.timeout_s, 600.0))
        if any(failed):
            if err is not None and failed.index(True) == self.comm.rank:
                err.agreed = True
                raise err
            raise SystemExit(2)

    def _agreed(self, write, what):
        """Run `write` (it writes on rank 0 only), and let every rank know whether that worked: a
        full disk on rank 0 must not leave the others waiting in the next collective."""
        err = None
        try:
            write()
        except UserError as e:
            err = e
        if self.comm.size > 1:
            self._agree(err, what, self.comm.timeout_s)
        elif err is not None:
            raise err

    # ------------------------------------------------------------------ set-up
    def _setup(self):
        cfg, comm, opts, t = self.cfg, self.comm, self.opts, self.cfg.train
        B.use(cfg.backend, device=comm.local_rank)
        jit.use(cfg.kernels)
        if cfg.train.batch_size < comm.size:
            raise ConfigError(f"train.batch_size: the global batch ({cfg.train.batch_size}) must be at least "
                              f"the number of ranks ({comm.size})")
        check_out_folder(opts.out, opts.resume, opts.overwrite)
        check_memory(f"the {cfg.data.name} data", {"data": data_bytes(cfg)}, comm.local_size,
                     "use a smaller dataset (data.n_samples / data.n_features, a shorter text)")
        self.task = build_task(cfg, comm.rank, comm.size)
        rows = -(-cfg.train.batch_size // comm.size)
        eval_rows = rows if cfg.model.name == "gpt" else min(cfg.train.eval_batch, 1 << 20)
        hint = "use a smaller model or batch, fewer ranks per node" + (", or float32" if t.dtype == "float64" else "")
        self.memory = memory_estimate(cfg, self.task.d_in, self.task.n_out, rows, eval_rows,
                                      shards=comm.size if cfg.optim.zero else 1)
        check_memory(f"model {cfg.model.name}", self.memory, comm.local_size, hint)
        self.model = build_model(cfg, self.task.d_in, self.task.n_out, cfg.train.seed)
        self.space = self.model.space
        # ZeRO-1: the optimizer steps this rank's slice of the buffers (its state 1/N the size)
        self.zero = ZeroReducer(comm, self.space.n_params) if cfg.optim.zero and comm.size > 1 else None
        self.opt_space = self.space.shard(self.zero.lo, self.zero.hi) if self.zero else self.space
        self.opt = build_optimizer(cfg.optim, self.opt_space)
        self.trace = T.Tracer(comm.rank) if cfg.logging.trace else None    # None: one test per phase
        self.spe = self.task.steps_per_epoch
        self.total_steps = t.epochs * self.spe
        if t.max_steps:
            self.total_steps = min(self.total_steps, t.max_steps) if t.epochs else t.max_steps
        self.step = 0
        self.state = RunState()
        self.fp = cfg.fingerprint()
        self.notes = []           # said on stdout before the start-up text (even with --quiet)
        if opts.resume and os.path.exists(self.ckpt_path):
            self._load_checkpoint()
        elif opts.resume:         # resume-if-there-is-one: what a requeued job needs; but said
            self.notes.append(f"note: --resume: no checkpoint in {opts.out} yet; starting from step 0")
        if self.step and cfg.comm.error_feedback and comm.size > 1:
            self.notes.append("note: comm.error_feedback: the rounding residuals are not in the checkpoint; "
                              "they restart at zero (the run does not continue bit for bit)")
        ckpt.check_stop_at(opts.stop_at_step, self.step, self.ckpt_path)
        self.resumed_from = self.step
        # Done and said so: a resume changes nothing. A run that reached its (possibly shortened)
        # length but was stopped there still gets its final evaluation and summary.
        self.complete = (opts.resume and self.step > 0 and self.step >= self.total_steps
                         and summary_status(self.summary_path, self.step) == "completed")
        if cfg.comm.accumulate > t.batch_size // comm.size:
            raise ConfigError(f"comm.accumulate: {cfg.comm.accumulate} micro-batches, but a rank's share of the "
                              f"global batch is {t.batch_size // comm.size} rows (at most that many)")

    def _setup_shared(self):
        """The collective part of the set-up: NCCL, identical starting parameters, the reducer."""
        c = self.cfg.comm
        if c.backend == "nccl":
            self.comm.use_nccl()
        self.comm.broadcast_(self.space.params, what="initial parameter broadcast")
        if c.algorithm == "ring":         # the statistic slots travel uncompressed (exact counts)
            g = self.space.grads_full
            self.comm.use_ring(g.size, g.dtype, c.compress, c.error_feedback, exact_tail=N_EXTRAS)
        self.overlap = self.comm.overlapped(self.space, c.bucket_mb, c.first_bucket_mb) if c.overlap else None
        if self.trace is not None:
            self.trace.align(self.comm)
            self.trace.watch(self.space, self.overlap)
        # where each rank runs: summary.json's "placement", one record per rank
        self.placement = [dict(rank=r, **p) for r, p in enumerate(self.comm.allgather(
            {"host": platform.node(), "local_rank": self.comm.local_rank, "local_size": self.comm.local_size,
             "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "device": B.device_index_in_use()},
            "rank placement"))]
        self.hosts = [p["host"] for p in self.placement]
        self.environment = None
        if self.comm.rank == 0:
            from ..study.environment import describe
            self.environment = describe(threads=int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or None,
                                        hosts=self.hosts, mpi_library=self.comm.library_version(),
                                        ranks=self.comm.size)

    def _load_checkpoint(self):
        ckpt.restore(self)

    def save_checkpoint(self):
        t0, state = time.perf_counter(), None
        if self.zero is not None:      # the whole optimizer state, as a run without ZeRO keeps it
            state = self.zero.gather_state({k: v for k, v in self.opt.state_dict().items() if k != "t"})
        if self.comm.rank == 0:
            ckpt.write(self, state)
        if self.trace is not None:
            self.trace.add(T.CHECKPOINT, t0, time.perf_counter())

    # ------------------------------------------------------------------ signals
    def _install_signals(self):
        def handler(signum, frame):
            # Only noted here: the ranks agree on stopping through the next all-reduce, since a
            # signal may reach the ranks during different steps (or reach only some of them).
            # A second Ctrl-C does not wait for the step: it ends the run now.
            if signum == signal.SIGINT and self.signum == signal.SIGINT:
                # rank 0 writes the files: it says what is there (after removing the temp file of
                # a write this interrupts; that write's own clean-up then finds it gone)
                left = ckpt.left_behind(self.opts.out) if self.comm.rank == 0 else ""
                raise KeyboardInterrupt(f"a second Ctrl-C stopped the run at once; {left}")
            self.signal_seen = True
            self.signum = signum
        self.signum, self.previous_handlers = None, {}
        if not self.opts.signals:
            return
        for name in STOP_SIGNALS:
            if hasattr(signal, name):
                num = getattr(signal, name)
                self.previous_handlers[num] = signal.signal(num, handler)

    # ------------------------------------------------------------------ loop
    def train_step(self, epoch, i):
        """One optimizer step; returns (compute_s, comm_s, global loss, global correct, items)."""
        space, ex, t = self.space, self.space.extras, self.cfg.train
        t0, tr = time.perf_counter(), self.trace
        x, y, n_items = self.task.batch(epoch, i)
        if tr is not None:
            tr.mark(T.BATCH, since=t0)
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
                if tr is not None:
                    tr.mark(T.FORWARD)
                self.model.backward()
                if tr is not None:
                    tr.mark(T.BACKWARD)
                loss, correct = loss + lk, correct + ck
        unwritten = space.finish_grads()
        if unwritten and not self.warned_unwritten and self.comm.rank == 0:
            self.warned_unwritten = True      # said once: a layer may skip a parameter on purpose
            names = ", ".join(unwritten[:6]) + (f" and {len(unwritten) - 6} more" if len(unwritten) > 6 else "")
            print(f"warning: no backward wrote a gradient for {names} at step {self.step + 1}: they get zero "
                  "gradient (write gradients with Param.acc / acc_matmul / acc_sum0; an assignment to "
                  "p.grad is overwritten: see docs/extending.md, the fresh rule)", file=sys.stderr, flush=True)
        # loss and correct may be device scalars (no read-back on a GPU); written on the device
        ex[EXTRA_LOSS], ex[EXTRA_CORRECT], ex[EXTRA_ITEMS] = loss, correct, y.size
        ex[EXTRA_STOP] = 0.0 if not self.signal_seen else INTERRUPT if self.signum == signal.SIGINT else 1.0
        t1 = now()
        if self.zero is not None:      # this rank's slice summed, the statistics and the norm too
            g = self.opt_space.grads
            self.zero.reduce_gradients(space.grads, g, ex, EXTRA_GNORM2)
        elif self.overlap is not None:
            self.comm.all_reduce_overlapped_finish(self.overlap)
        else:
            self.comm.all_reduce_gradients(space.grads_full)
        t2 = now()
        if tr is not None:
            tr.communicated(T.ALLREDUCE if self.zero is None else T.REDUCE_SCATTER, t1, t2)
        if self.zero is None:
            # Every step, clipping or not: the non-finite gradient check, before the update (a finite
            # loss can come with an inf gradient; test_reliability.py). One BLAS pass, ~1% of the e2e
            # MLP step: bench_trainer.py.
            g = space.grads
            ex[EXTRA_GNORM2] = B.xp.dot(g, g)
        stats = B.to_numpy(ex).astype(np.float64)      # the step's one device->host read
        gnorm = math.sqrt(stats[EXTRA_GNORM2]) if stats[EXTRA_GNORM2] >= 0 else math.nan
        if stats[EXTRA_STOP] > 0:
            self.stop_requested = "interrupted" if stats[EXTRA_STOP] >= INTERRUPT else "preempted"
        # any rank's non-finite loss makes the sum non-finite (inf - inf is nan, still caught)
        if not math.isfinite(stats[EXTRA_LOSS]) or not math.isfinite(gnorm):
            return self._nonfinite(stats, gnorm), t1 - t0, t2 - t1
        self.skips = 0
        if t.grad_clip and gnorm > t.grad_clip:
            g *= t.grad_clip / (gnorm + 1e-6)
        self.opt.step(lr_at(self.cfg.optim, self.step, self.total_steps))
        if tr is not None:
            tr.mark(T.OPTIMIZER)
        if self.zero is not None:
            t2 += self.zero.all_gather_params(space.params)     # communication time, too
            if tr is not None:
                tr.mark(T.ALLGATHER)
        self.gnorm = gnorm
        return stats, t1 - t0, t2 - t1

    def _nonfinite(self, stats, gnorm):
        t = self.cfg.train
        what = "loss" if not math.isfinite(stats[EXTRA_LOSS]) else "gradient norm"
        if t.nonfinite == "skip":
            self.state.skipped += 1
            self.skips += 1
            if self.skips <= t.max_skips:
                return stats
            raise NonFinite(f"non-finite {what} at step {self.step + 1}: {self.skips} consecutive steps skipped "
                            f"(train.max_skips={t.max_skips})")
        layer = next((p.name for p in self.space.plist if not bool(B.xp.isfinite(p.grad).all())), None)
        where = f"; first non-finite gradient in {layer}" if layer else ""
        fp16 = self.comm.size > 1 and self.cfg.comm.compress == "fp16"
        raise NonFinite(f"non-finite {what} at step {self.step + 1}{where} (train.nonfinite=abort; "
                        + ("gradients sent as fp16 overflow beyond +-65504: try comm.compress=bf16, " if fp16 else "")
                        + "try a lower optim.lr or train.nonfinite=skip)")

    def run(self):
        """Train to total_steps (or a stop); returns the summary, or None when a resumed run was
        already complete (then nothing is written)."""
        cfg, comm, opts, st = self.cfg, self.comm, self.opts, self.state
        if self.complete:
            return None
        self._agreed(self._lock_out, "output folder lock")
        if comm.rank == 0 and self.notes:
            print("\n".join(self.notes), flush=True)
        if comm.rank == 0 and not opts.quiet:
            print(startup_text(self), flush=True)
        self.skips = 0
        self.gnorm = 0.0
        self.wandb = wandb_init(cfg, opts.out) if comm.rank == 0 and cfg.logging.wandb else None
        times = StepTimes()
        prog = Progress(self.total_steps, start=self.step, unit=self.task.items,
                        enabled=comm.rank == 0 and cfg.logging.progress and not opts.quiet)
        status, t = "completed", cfg.train
        self.check_consistency("start")
        self.energy = energy_meter(cfg, comm)
        epoch, i = divmod(self.step, self.spe)
        ips = self.task.items_per_step()
        while self.step < self.total_steps:
            t0 = time.perf_counter()
            comm.step = self.step + 1    # messages number steps as the progress line does: from 1
            with np.errstate(over="ignore", invalid="ignore"):   # non-finite values are handled by policy
                stats, c_s, m_s = self.train_step(epoch, i)
            B.synchronize()              # the optimizer's kernels belong to this step's time
            dt = time.perf_counter() - t0
            if self.trace is not None:
                self.trace.add(T.STEP, t0, t0 + dt, step=self.step)
            st.train_s += dt
            times.add(c_s, m_s, dt)
            if not self.skips:      # a skipped step contributes nothing, not even to the averages
                st.ep_loss += stats[EXTRA_LOSS]
                st.ep_correct += stats[EXTRA_CORRECT]
                st.ep_items += self.n_items     # global count of scored targets (the loss normaliser)
                st.ep_steps += 1
            self.step += 1
            i += 1
            comm.step = self.step
            end_of_epoch = i == self.spe
            if (t.eval_every and self.step % t.eval_every == 0) or (not t.eval_every and end_of_epoch) \
                    or self.step == self.total_steps:
                self._evaluate(epoch + i / self.spe, times, prog)
            prog.update(self.step, epoch + i / self.spe, stats[EXTRA_LOSS], times.rate(ips))
            if end_of_epoch:
                epoch, i = epoch + 1, 0
                st.end_epoch()
            if t.check_every and self.step % t.check_every == 0:
                self.check_consistency(f"step {self.step}")
            if t.checkpoint_every and self.step % t.checkpoint_every == 0:
                self._agreed(self.save_checkpoint, f"checkpoint write at step {self.step}")
            if opts.stop_at_step and self.step >= opts.stop_at_step and self.step < self.total_steps:
                status = "stopped"
                break
            if self.stop_requested and self.step < self.total_steps:
                status = self.stop_requested
                break
        if self.step >= self.total_steps and (not st.history or st.history[-1]["step"] != self.step):
            self._evaluate(self.step / self.spe, times, prog)     # a resumed run that had reached its end
        prog.close()
        energy = self.energy.stop(flops=0.0, seconds=times.total_s) if self.energy else None
        self._agreed(self.save_checkpoint, f"checkpoint write at step {self.step}")
        summary = build_summary(self, times, status, energy)
        self._agreed(lambda: self._write_summary(summary), "summary write")
        if self.trace is not None:
            self._agreed(lambda: self.trace.write(comm, os.path.join(opts.out, "trace.json")), "trace write")
        if comm.rank == 0:
            if self.wandb:
                self.wandb.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
                self.wandb.finish()
        if status in ("preempted", "interrupted"):
            code = EXIT_INTERRUPTED if status == "interrupted" else EXIT_PREEMPTED
            e = Stopped(code, f"{'interrupted' if code == EXIT_INTERRUPTED else 'stop signal'}: checkpoint "
                        f"written at step {self.step}; continue with --resume")
            e.signum = self.signum or (signal.SIGINT if code == EXIT_INTERRUPTED else signal.SIGUSR2)
            e.previous_handler = self.previous_handlers.get(e.signum)   # e.g. submitit's requeue
            e.summary = summary
            raise e
        return summary

    def _lock_out(self):
        if self.comm.rank == 0:
            self.lock = lock_out_folder(self.opts.out)     # held until this process ends

    def _write_summary(self, summary):
        if self.comm.rank == 0:
            atomic_write_text(self.summary_path, json.dumps(summary, indent=2) + "\n")

    def _evaluate(self, epoch, times, prog):
        """One validation pass (a collective), recorded in the learning curve."""
        cfg, st, t0 = self.cfg, self.state, time.perf_counter()
        rec = {"step": self.step, "epoch": epoch,
               "train_loss": st.ep_loss / max(1, st.ep_steps),
               "train_loss_steps": st.ep_steps,     # the steps of this epoch so far (skipped ones not)
               "train_accuracy": st.ep_correct / max(1.0, st.ep_items),
               "lr": lr_at(cfg.optim, self.step - 1, self.total_steps),
               f"{self.task.items}_per_s": times.rate(self.task.items_per_step())}
        rec.update({f"val_{k}": v for k, v in self.task.evaluate(self.model, "val", self.comm).items()})
        st.history.append(rec)
        if self.trace is not None:
            self.trace.add(T.EVALUATION, t0, time.perf_counter())
        prog.set_validation(rec)
        if self.wandb:
            self.wandb.log(rec, step=rec["step"])

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
