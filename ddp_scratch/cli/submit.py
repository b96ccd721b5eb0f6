"""`launch.py submit`: the training job through submitit, on SLURM (one task per rank, each
calling the same train entry as `launch.py train`) or, with --local, through submitit's local
executor (one task that runs mpiexec, since a local job has no MPI launcher of its own).

Preemption and time limits: submitit signals USR2 shortly before the limit; every rank finishes
its step, rank 0 writes the checkpoint, then submitit's own handler requeues the job with
`checkpoint()`'s resubmission, which resumes from OUT/checkpoint.npz.
"""
import argparse
import os
import subprocess
import sys

from ..errors import UserError
from .args import add_slurm_resource_args, add_train_args
from .local import LAUNCH_PY, find_mpiexec


class TrainTask:
    """The submitted callable: picklable, re-entrant, checkpointable."""

    def __init__(self, config, out, overrides=(), resume=False, local_ranks=0, stop_at_step=0):
        self.config, self.out, self.overrides = os.path.abspath(config), os.path.abspath(out), list(overrides)
        self.resume, self.local_ranks, self.stop_at_step = resume, local_ranks, stop_at_step

    def argv(self):
        a = ["train", self.config, "--out", self.out]
        for o in self.overrides:
            a += ["--set", o]
        if self.resume:
            a.append("--resume")
        if self.stop_at_step:
            a += ["--stop-at-step", str(self.stop_at_step)]
        return a

    def __call__(self):
        if self.local_ranks:
            cmd = [find_mpiexec(), "-n", str(self.local_ranks), sys.executable, LAUNCH_PY, *self.argv()]
            rc = subprocess.run(cmd).returncode
            if rc != 0:
                raise RuntimeError(f"local training job failed with exit status {rc}")
            return self._summary()
        from ..parallel.world import initialized_world
        from ..run.trainer import Stopped
        from .train import cmd_train
        p = argparse.ArgumentParser(prog="launch.py train")
        add_train_args(p)
        args = p.parse_args(self.argv()[1:])
        try:
            cmd_train(args)
        except Stopped as e:
            # Hand the signal on to submitit's handler: on rank 0 it calls checkpoint() and requeues.
            prev = getattr(e, "previous_handler", None)
            print(f"{e} (signal {e.signum})", file=sys.stderr, flush=True)
            if callable(prev):
                prev(e.signum, None)
            raise SystemExit(e.code)
        rank = initialized_world()[0]
        return self._summary() if rank == 0 else {"rank": rank}     # rank 0 writes the summary

    def _summary(self):
        import json
        with open(os.path.join(self.out, "summary.json")) as f:
            s = json.load(f)
        return {k: s.get(k) for k in ("status", "world_size", "steps", "train_loss", "test_accuracy",
                                      "samples_per_s", "val_loss")}

    def checkpoint(self, *args, **kwargs):
        import submitit
        return submitit.helpers.DelayedSubmission(TrainTask(self.config, self.out, self.overrides, True,
                                                            self.local_ranks))


def make_executor(a):
    try:
        import submitit
    except ImportError:
        raise UserError("submit: needs submitit (pip install submitit)") from None
    folder = a.logs or os.path.join(a.out, "submitit")
    if a.local:
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=a.time, nodes=1, tasks_per_node=1)
        return ex
    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=a.max_requeue)
    extra = {}
    if a.account:
        extra["account"] = a.account
    params = dict(nodes=a.nodes, ntasks_per_node=a.tasks_per_node, cpus_per_task=a.cpus_per_task,
                  time=a.time, signal_delay_s=a.signal_delay, srun_args=list(a.srun_arg),
                  additional_parameters=extra, job_name=a.job_name)
    if a.gpus_per_node:
        params["gpus_per_node"] = a.gpus_per_node
    if a.partition:
        params["partition"] = a.partition
    if a.mem:
        params["mem"] = a.mem
    ex.update_parameters(**params)
    return ex


def submit(a, log=print):
    from ..config import load_config
    load_config(a.config, a.overrides)       # fail here, not in a queued job
    for name in ("nodes", "tasks_per_node", "cpus_per_task", "time"):
        if getattr(a, name) < 1:
            raise UserError(f"submit --{name.replace('_', '-')}: expected a positive integer, got {getattr(a, name)}")
    out = a.out or os.path.join("runs", os.path.splitext(os.path.basename(a.config))[0])
    a.out = out
    task = TrainTask(a.config, out, a.overrides, a.resume,
                     local_ranks=a.nodes * a.tasks_per_node if a.local else 0, stop_at_step=a.stop_at_step)
    ex = make_executor(a)
    try:
        job = ex.submit(task)
    except Exception as e:   # sbatch rejected it: say why in one line
        msg = str(e).strip().splitlines()
        raise UserError(f"submit: the job was not accepted: {msg[-1] if msg else type(e).__name__}") from None
    log(f"submitted job {job.job_id}: {a.nodes} node(s) x {a.tasks_per_node} task(s); "
        f"logs {job.paths.stdout} / {job.paths.stderr}; results in {os.path.abspath(out)}")
    if not a.wait:
        return 0
    try:
        res = job.results()[0]     # one result per task; rank 0's is the run's
    except Exception as e:
        raise UserError(f"job {job.job_id} failed: {_reason(str(e))} (see {job.paths.stderr})") from None
    log(f"job {job.job_id} {job.state.lower()}: {res}")
    return 0


def _reason(text):
    """The most telling line of a failed job's exception text (its last 'error' line)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    hits = [ln for ln in lines if "rror" in ln and not ln.startswith("File ")]
    return (hits or lines or ["unknown error"])[-1][:300]


def add_submit_parser(cmd):
    p = cmd("submit", "submit training as a SLURM job through submitit (or a local submitit job)")
    add_train_args(p)
    p.add_argument("--nodes", type=int, default=1)
    add_slurm_resource_args(p, tasks_per_node=1, time=60)
    p.add_argument("--mem", default=None, help="e.g. 16G per node")
    p.add_argument("--job-name", default="ddp_scratch")
    p.add_argument("--signal-delay", type=int, default=120, help="seconds before the time limit to checkpoint")
    p.add_argument("--max-requeue", type=int, default=3, help="requeues after time limits")
    p.add_argument("--logs", default=None, help="submitit folder (default OUT/submitit)")
    p.add_argument("--local", action="store_true", help="run through submitit's local executor")
    p.add_argument("--wait", action="store_true", help="follow the job and return its status")
    return p


def slurm_launcher(a):
    """For `launch.py scaling --slurm`: each sweep point as a submitit SLURM job with one task per
    rank (all on one node unless --tasks-per-node), waited for before the next point."""

    def launch(n, argv):
        per_node = a.tasks_per_node or n
        nodes = -(-n // per_node)
        if nodes * per_node != n:
            raise UserError(f"scaling --slurm: {n} ranks do not fill nodes of --tasks-per-node {per_node}")
        out = argv[argv.index("--out") + 1]
        sets = [argv[i + 1] for i, x in enumerate(argv) if x == "--set"]
        ns = argparse.Namespace(logs=os.path.join(out, "submitit"), local=False, max_requeue=0, nodes=nodes,
                                tasks_per_node=per_node, cpus_per_task=a.cpus_per_task, time=a.time,
                                signal_delay=60, srun_arg=a.srun_arg, account=a.account, job_name="ddp-sweep",
                                gpus_per_node=a.gpus_per_node, partition=a.partition, mem=None)
        job = make_executor(ns).submit(TrainTask(argv[argv.index("train") + 1], out, sets))
        print(f"  SLURM job {job.job_id} ({nodes} node(s) x {per_node} task(s)), logs {job.paths.stderr}", flush=True)
        try:
            job.results()
        except Exception as e:
            print(f"  job {job.job_id} failed: {_reason(str(e))}", flush=True)
            return 1
        return 0
    return launch
