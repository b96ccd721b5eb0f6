"""OUT/summary.json of a run (and its Weights & Biases mirror), and what a run carries across a stop and a resume so that the
summary of a resumed run covers the whole run, as an uninterrupted one would."""
import json
import os
import sys

from .. import backend as B
from ..nn import jit
from ..study.metrics import peak_rss_bytes, scaling_metrics


class RunState:
    """What a checkpoint keeps besides parameters and optimizer state: the learning curve, the
    sums of the epoch in progress, skipped steps, training seconds so far (JSON in the metadata)."""

    FIELDS = ("history", "ep_loss", "ep_correct", "ep_items", "ep_steps", "skipped", "train_s")

    def __init__(self):
        self.history = []
        self.ep_loss = self.ep_correct = self.ep_items = 0.0
        self.ep_steps = self.skipped = 0
        self.train_s = 0.0

    def to_meta(self):
        return {k: getattr(self, k) for k in self.FIELDS}

    @classmethod
    def from_meta(cls, d, where):
        """From a checkpoint's metadata; `where` names the file in the error. Absent (older
        checkpoints): an empty state."""
        from ..errors import CheckpointError
        st = cls()
        if d is None:
            return st
        if not isinstance(d, dict):
            raise CheckpointError(f"{where}: metadata 'run' is {type(d).__name__}, expected a mapping")
        for k in cls.FIELDS:
            v = d.get(k, getattr(st, k))
            want = list if k == "history" else (int if k in ("ep_steps", "skipped") else (int, float))
            if isinstance(v, bool) or not isinstance(v, want) or (k == "history" and not all(isinstance(r, dict) for r in v)):
                raise CheckpointError(f"{where}: metadata 'run.{k}' is {v!r:.60}, expected "
                                      f"{'a list of records' if k == 'history' else 'a number'}")
            setattr(st, k, v)
        return st

    def end_epoch(self):
        self.ep_loss = self.ep_correct = self.ep_items = 0.0
        self.ep_steps = 0


def build_summary(tr, times, status, energy=None):
    """The summary of trainer `tr` (a collective: scaling metrics gather from every rank)."""
    cfg, comm, task, st = tr.cfg, tr.comm, tr.task, tr.state
    test = task.evaluate(tr.model, "test", comm) if status == "completed" else {}
    rows = times.rows()
    steps_run = len(rows)
    ips = task.items_per_step()
    flops = tr.model.flops_per_step(ips) * steps_run
    last = st.history[-1] if st.history else {}
    train_loss, over = last.get("train_loss"), None
    if train_loss is not None:
        at = last.get("step", tr.step)
        over = train_loss_over(at, last.get("train_loss_steps", (at - 1) % tr.spe + 1), tr.spe, tr.step)
    elif st.ep_steps:      # stopped before the first evaluation
        train_loss, over = st.ep_loss / st.ep_steps, train_loss_over(tr.step, st.ep_steps, tr.spe, tr.step)
    seg_s = float(rows[:, 2].sum()) if steps_run else 0.0
    s = {
        "status": status, "world_size": comm.size, "backend": B.name, "device": B.device_name(),
        "kernels": jit.describe(),
        "dtype": cfg.train.dtype, "model": cfg.model.name, "data": cfg.data.name,
        "n_params": tr.space.n_params, "steps": tr.step, "total_steps": tr.total_steps,
        "steps_this_run": steps_run, "resumed_from_step": tr.resumed_from, "epochs": tr.step / tr.spe,
        "global_batch": cfg.train.batch_size, "items_per_sample": getattr(task, "items_per_sample", 1),
        "train_loss": train_loss, "train_loss_over": over,
        "val_loss": last.get("val_loss"), "val_accuracy": last.get("val_accuracy"),
        "test_loss": test.get("loss"), "test_accuracy": test.get("accuracy"),
        f"{task.items}_per_s": steps_run * ips / seg_s if seg_s else 0.0,
        "flops_per_step": tr.model.flops_per_step(ips),
        "flops_per_s": flops / seg_s if seg_s else 0.0,
        "wall_s": st.train_s, "wall_s_this_run": seg_s,
        "comm_s": float(rows[:, 1].sum()), "compute_s": float(rows[:, 0].sum()),
        "skipped_steps": st.skipped, "placement": getattr(tr, "placement", None), "threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0),
        "peak_rss_bytes": peak_rss_bytes(), "history": st.history, "config": cfg.to_dict(),
    }
    # bytes on the wire per step and rank: counted by the ring, modelled for MPI_Allreduce
    s["comm_bytes_per_step"], s["comm_bytes_per_step_source"] = comm.bytes_per_step(tr.space.grads_full.nbytes)
    # optimizer state each rank holds (its update scratch aside): 1/N of it under ZeRO-1
    held = comm.allgather(sum(int(v.nbytes) for k, v in tr.opt.state_dict().items() if k != "t"),
                          "optimizer state sizes")
    s.update(optim_zero=cfg.optim.zero, optim_state_bytes_per_rank=max(held), optim_state_bytes_by_rank=held)
    if task.items != "samples":
        s["samples_per_s"] = s[f"{task.items}_per_s"] / getattr(task, "items_per_sample", 1)
    if status == "completed":
        s.update(getattr(task, "extra_summary", lambda m, c: {})(tr.model, comm))
    # the analytic memory: the model's own account where it has one (the GPT's, with its
    # workspaces), else the estimate the trainer checked against free memory before allocating
    mem = getattr(tr.model, "memory_report", None)
    if mem is not None:
        s.update(mem(ips))
    elif getattr(tr, "memory", None):
        s.update({f"memory_{k}_bytes": int(v) for k, v in tr.memory.items()})
        s["memory_total_bytes"] = int(sum(tr.memory.values()))
    s.update(scaling_metrics(comm, times.rows(skip=cfg.train.timing_skip), s, energy, tr.space.n_params, tr.spe))
    if getattr(tr, "environment", None) is not None:
        s["environment"] = tr.environment
    return s


def train_loss_over(at, n, spe, now):
    """What a train_loss recorded at step `at` is the mean of, in words (the final line's label):
    `n` steps of the epoch in progress were counted, of `spe` per epoch; the run is at step `now`."""
    if at % spe == 0:
        return "last epoch's mean" if now // spe == at // spe else f"epoch {at // spe}'s mean"
    if at == now and at <= spe:
        return f"mean of the {n:,} step{'s' * (n != 1)} run"
    return f"mean of epoch {(at - 1) // spe + 1}'s first {n:,} step{'s' * (n != 1)}" + (
        f", at step {at:,}" if at != now else "")


def summary_status(path, step):
    """The status of OUT/summary.json if it describes step `step`, else None."""
    try:
        with open(path) as f:
            s = json.load(f)
        return s.get("status") if isinstance(s, dict) and s.get("steps") == step else None
    except (OSError, ValueError):
        return None


def wandb_init(cfg, out):
    os.environ.setdefault("WANDB_MODE", cfg.logging.wandb_mode)
    os.environ.setdefault("WANDB_DIR", os.path.abspath(out))
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        import wandb
        return wandb.init(project=cfg.logging.wandb_project, config=cfg.to_dict(), dir=os.path.abspath(out))
    except Exception as e:   # logging must never take a training run down
        print(f"warning: wandb disabled ({type(e).__name__}: {e})", file=sys.stderr, flush=True)
        return None
