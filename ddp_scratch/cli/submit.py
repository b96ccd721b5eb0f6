"""`launch.py submit`: the training job through submitit, on SLURM (one task per rank, each
calling the same train entry as `launch.py train`) or, with --local, through submitit's local
executor (one task that runs mpiexec through cli/local.py's Launch, since a local job has no MPI
launcher of its own). Also `launch.py sweep-point`, which files a finished run of a SLURM
job-array sweep (slurm/sweep_array.sbatch) as a point of a scaling report.

Everything the job would refuse is refused before it is queued (`preflight`, one line, exit 2).

--wait follows the job to a final SLURM state. The result files appear before SLURM calls the
job finished (each task writes its result, then exits, then the job is COMPLETING), and
submitit's `job.state` is a cached answer of its last, back-off timed `sacct` call: reading it
right after `job.results()` returned UNKNOWN, PENDING, RUNNING or COMPLETED by chance. So the
state is asked from sacct (through submitit, `get_info(mode="force")`) until it is final, then
rank 0's result is read. Exit status: 0 completed; 1 the job ended otherwise (one line with the
reason and the log); 128+N when signal N (INT, TERM, HUP) stopped the wait, which first
cancels the SLURM job (scancel) or stops the local one (every rank checkpoints and exits).

Preemption and time limits: submitit signals USR2 shortly before the limit; every rank finishes
its step, rank 0 writes the checkpoint, then submitit's own handler requeues the job with
`checkpoint()`'s resubmission, which resumes from OUT/checkpoint.npz.

Size: one file for a job's whole life on the cluster (check, submit, wait, stop, report) and the
one step after an array sweep's point; the parts share the job object, its signals and its states.
"""
import argparse
import json
import os
import shutil
import re
import signal
import subprocess
import sys
import time
import uuid

from ..errors import UserError
from .args import add_slurm_resource_args, add_train_args, integer, path
from .local import LAUNCH_PY, Launch, find_mpiexec, kill_job, unlink_all

# SLURM job states after which nothing more happens to the job (submitit counts PREEMPTED as
# not done: a preempted job is normally requeued).
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
         "DEADLINE", "REVOKED", "SPECIAL_EXIT"}
STOPS = ("SIGINT", "SIGTERM", "SIGHUP")     # what a person (or a closed terminal) sends the waiting submit
MARK = "DDP_SUBMIT_JOB"                     # environment mark of every process of a local job
STOP_GRACE_S = 60      # local job: time for the ranks to checkpoint after a stop, then they are killed
CANCEL_WAIT_S = 120    # SLURM job: time to wait for a cancelled job to end (KillWait is often 30 s)


class JobFailed(UserError):
    exit_code = 1      # the job ran and failed: not the user's input (2)


class TrainTask:
    """The submitted callable: picklable, re-entrant, checkpointable."""

    def __init__(self, config, out, overrides=(), resume=False, local_ranks=0, stop_at_step=0,
                 overwrite=False, quiet=False):
        self.config, self.out, self.overrides = os.path.abspath(config), os.path.abspath(out), list(overrides)
        self.resume, self.local_ranks, self.stop_at_step = resume, local_ranks, stop_at_step
        self.overwrite, self.quiet = overwrite, quiet

    def argv(self):
        a = ["train", self.config, "--out", self.out]
        for o in self.overrides:
            a += ["--set", o]
        a += [f for f, on in (("--resume", self.resume), ("--overwrite", self.overwrite), ("--quiet", self.quiet)) if on]
        if self.stop_at_step:
            a += ["--stop-at-step", str(self.stop_at_step)]
        return a

    def __call__(self):
        if self.local_ranks:
            return self._run_local()
        from ..parallel.env import initialized_world
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

    def _run_local(self):
        """mpiexec for the local ranks through Launch: a stop signal (from `submit --wait`, through
        submitit's controller) reaches every rank, and a second one kills them."""
        early = []        # a stop that comes before Launch has its handlers: do not start the ranks

        def note(signum, frame):
            early.append(signal.Signals(signum).name)
        old = {s: signal.signal(getattr(signal, s), note) for s in STOPS}
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {getattr(signal, s) for s in STOPS})   # mpiexec inherits it
        try:
            if early:
                return {"stopped": early[0], "exit_status": None}
            run = Launch([find_mpiexec(), "-n", str(self.local_ranks), sys.executable, LAUNCH_PY, *self.argv()],
                         out=self.out)
            rc = run.run()
        finally:
            for s, h in old.items():
                signal.signal(getattr(signal, s), h)
        if run.signals or early:
            return {"stopped": (run.signals or early)[0], "exit_status": rc}
        if rc != 0:
            raise RuntimeError(f"local training job failed with exit status {rc}")
        return self._summary()

    def _summary(self):
        with open(os.path.join(self.out, "summary.json")) as f:
            s = json.load(f)
        s.pop("history", None)
        return s

    def checkpoint(self, *args, **kwargs):
        import submitit
        return submitit.helpers.DelayedSubmission(TrainTask(self.config, self.out, self.overrides, True,
                                                            self.local_ranks, self.stop_at_step, quiet=self.quiet))


def _local_executor(folder, token):
    """submitit's LocalExecutor whose controller runs in a session of its own (a Ctrl-C in the
    terminal reaches `submit` alone, which stops the job in order: submitit's controller would
    kill its task a second after a SIGINT and leave mpiexec's ranks behind), with MARK=token in
    the environment that the task, mpiexec and every rank inherit."""
    import submitit
    from submitit.local import local as sl

    class Popen(subprocess.Popen):
        def __init__(self, *args, **kw):
            kw["env"] = dict(kw.get("env") or os.environ, **{MARK: token})
            super().__init__(*args, start_new_session=True, **kw)

    class Subprocess:          # `subprocess` as submitit's start_controller sees it
        def __getattr__(self, name):
            return Popen if name == "Popen" else getattr(subprocess, name)

    class LocalExecutor(submitit.LocalExecutor):
        def _submit_command(self, command):
            real, sl.subprocess = sl.subprocess, Subprocess()
            try:
                return super()._submit_command(command)
            finally:
                sl.subprocess = real
    return LocalExecutor(folder=folder)


def make_executor(a, token=None):
    try:
        import submitit
    except ImportError:
        raise UserError("submit: needs submitit (pip install submitit)") from None
    folder = a.logs or os.path.join(a.out, "submitit")
    if a.local:
        ex = _local_executor(folder, token or uuid.uuid4().hex)
        ex.update_parameters(timeout_min=a.time, nodes=1, tasks_per_node=1, signal_delay_s=a.signal_delay)
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


def _memory(text):
    if not re.fullmatch(r"\d+[KMGT]?", text.strip()):
        raise argparse.ArgumentTypeError(f"expected memory per node like 16G or 16000M, got {text!r}")
    return text.strip()


def _job_name(text):
    if not text.strip() or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"expected a job name without spaces, got {text!r}")
    return text


def check_submit_args(a):
    """What argparse cannot see in the job-shape flags (it checks each one's range): how they go
    together, and a log folder that is not a file."""
    if a.logs is not None and os.path.exists(a.logs) and not os.path.isdir(a.logs):
        raise UserError(f"submit --logs {a.logs} is a file, expected a folder for the job's logs")
    if a.signal_delay >= a.time * 60:
        raise UserError(f"submit --signal-delay: expected fewer seconds than the time limit (--time {a.time} min = "
                        f"{a.time * 60} s), got {a.signal_delay}: lower --signal-delay or raise --time")


class _Signals:
    """INT/TERM/HUP while `submit` runs: noted for the wait loop, which acts on them."""

    def __enter__(self):
        self.names, self.at = [], None
        self.old = {s: signal.signal(getattr(signal, s), self._note) for s in STOPS}
        return self

    def _note(self, signum, frame):
        self.names.append(signal.Signals(signum).name)
        self.at = self.at or time.time()

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(getattr(signal, s), h)

    @staticmethod
    def deferred(fn, *args):
        """fn(*args) with the stops held back until it returns, also in the programs it runs
        (sbatch, sacct, squeue, scancel inherit the mask): a Ctrl-C reaches the terminal's whole
        foreground group and would kill them halfway, e.g. sbatch after it queued the job."""
        nums = {getattr(signal, s) for s in STOPS}
        old = signal.pthread_sigmask(signal.SIG_BLOCK, nums)
        try:
            return fn(*args)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def submit(a, log=print):
    from .checks import preflight
    check_submit_args(a)
    if a.local:
        from .checks import check_rank_count, check_rank_memory
        from .local import cores_here
        check_rank_count(a.nodes * a.tasks_per_node, cores_here(), "submit --local")
    cfg, out = preflight(a, ranks=a.nodes * a.tasks_per_node)     # fail here, not in a queued job
    if a.local:
        check_rank_memory(cfg, a.nodes * a.tasks_per_node, "submit --local")
    if a.local and find_mpiexec() is None:
        raise UserError("submit --local: no mpiexec found (pip install mpich, or load your cluster's MPI module)")
    a.out = out
    task = TrainTask(a.config, out, a.overrides, a.resume, local_ranks=a.nodes * a.tasks_per_node if a.local else 0,
                     stop_at_step=a.stop_at_step, overwrite=a.overwrite, quiet=a.quiet)
    token = uuid.uuid4().hex
    ex = make_executor(a, token)
    with _Signals() as sig:
        try:
            # (not --local: its controller would inherit the blocked mask, and every rank with it;
            # it runs in a session of its own, out of the terminal's reach)
            job = ex.submit(task) if a.local else sig.deferred(ex.submit, task)
        except Exception as e:   # sbatch rejected it: say why in one line
            raise UserError(f"submit: the job was not accepted: {_rejection(e)}") from None
        t0 = time.time()
        what = "local job" if a.local else "job"
        shape = (f"{a.nodes * a.tasks_per_node} rank(s) under mpiexec" if a.local else
                 f"{a.nodes} node(s) x {a.tasks_per_node} task(s)")
        log(f"submitted {what} {job.job_id}: {shape}; "
            f"logs {job.task(0).paths.stdout} / {job.task(0).paths.stderr}; results in {os.path.abspath(out)}")
        sys.stdout.flush()
        if not (a.wait or sig.names):
            return 0
        state = _wait_local(job, sig, token) if a.local else _wait_slurm(job, sig)
    if sig.names:
        return _stopped(job, what, state, sig, out, a.local)
    res, why, logf = _outcome(job)
    if why is None and isinstance(res, dict) and res.get("stopped"):
        why = f"its ranks were stopped by {res['stopped']} (exit status {res.get('exit_status')}), not by this submit"
    if why is None and state not in ("COMPLETED", "FINISHED"):
        why = f"every task returned its result, but SLURM ended the job {state}"
    if why is None and isinstance(res, dict) and "status" in res and state in ("COMPLETED", "FINISHED"):
        from ..run.progress import final_line
        extra = f" ({job.killed} leftover process(es) killed)" if getattr(job, "killed", 0) else ""
        log(f"{what} {job.job_id} {state} in {time.time() - t0:.0f}s: {final_line(res, os.path.abspath(out))}{extra}")
        return 0
    state = "FAILED" if a.local else state        # (submitit calls every local job that exited FINISHED)
    raise JobFailed(f"{what} {job.job_id} {state}: {why or 'no result from rank 0'} (log: {logf})")


def _slurm_state(job):
    state = (job.get_info(mode="force").get("State") or "UNKNOWN").split()[0].upper()  # "CANCELLED by 0"
    if state == "UNKNOWN":      # sacct has no record (no accounting, or not yet): ask slurmctld
        r = subprocess.run(["squeue", "-h", "-t", "all", "-j", str(job.job_id), "-o", "%T"],
                           capture_output=True, text=True)
        state = (r.stdout.split() or ["UNKNOWN"])[0] if r.returncode == 0 else "UNKNOWN"
    return state


def _wait_slurm(job, sig, max_poll_s=30.0):
    """-> the job's final SLURM state (None when a stop made us give up). sacct is asked with a
    growing interval (1 s .. max_poll_s), every second once results exist or after a cancel."""
    interval, next_poll, cancelled = 1.0, 0.0, None
    tasks = [job.task(i) for i in range(job.num_tasks)]
    state = None
    while True:
        now = time.monotonic()
        if sig.names:
            if cancelled is None:
                sig.deferred(job.cancel, False)  # scancel JOBID
                cancelled, next_poll = now, now
            if len(sig.names) > 1 or now - cancelled > CANCEL_WAIT_S:
                return state                     # asked twice, or the job does not end: stop waiting
        ready = all(t.paths.result_pickle.exists() for t in tasks)
        if now >= next_poll or (ready and next_poll - now > 1.0):
            state = sig.deferred(_slurm_state, job)
            if state in FINAL:
                return state
            interval = 1.0 if (ready or cancelled) else min(interval * 1.5, max_poll_s)
            next_poll = now + interval
        time.sleep(0.2)


def _marked(token):
    """pids of the processes that carry MARK=token (the local job's controller, task, mpiexec, ranks)."""
    mark, pids = f"{MARK}={token}".encode(), []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/environ", "rb") as f:
                    if mark in f.read().split(b"\0"):
                        pids.append(int(d))
            except OSError:
                pass
    return pids


def _kill_marked(token, timeout=10.0):
    """SIGKILL every process of the local job; -> how many there were. The MPICH shared-memory
    segments its ranks had mapped are removed too: killed ranks never unlink them (2 MB each
    in /dev/shm, and a later job whose id hashes alike would open a stale one)."""
    pids, shm = kill_job(lambda: _marked(token))
    deadline = time.monotonic() + timeout
    while _marked(token) and time.monotonic() < deadline:
        time.sleep(0.1)
    unlink_all(shm)
    return len(pids)


def _parent(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _wait_local(job, sig, token):
    """Wait for the local job. On a stop: the signal to submitit's task, whose Launch passes it to
    mpiexec and every rank (checkpoint, exit), or SIGTERM to submitit's controller while it has no
    task yet; a second stop, or no end within STOP_GRACE_S, kills them all. No process of the
    job outlives this function."""
    pid, stopped = int(job.job_id), None        # a local job's id is its controller's pid
    job.killed = 0
    while not job.done():
        now = time.monotonic()
        if sig.names:
            if stopped is None:
                stopped = now
                tasks = [p for p in _marked(token) if _parent(p) == pid]
                for p, num in [(p, getattr(signal, sig.names[0])) for p in tasks] or [(pid, signal.SIGTERM)]:
                    try:
                        os.kill(p, num)
                    except OSError:
                        pass
            if len(sig.names) > 1 or now - stopped > STOP_GRACE_S:
                job.killed += _kill_marked(token)
        time.sleep(0.2)
    job.killed += _kill_marked(token)           # normally none after a clean end: said if any
    return job.state


def _outcome(job):
    """-> (rank 0's result, None, log) or (None, reason, log of the failed task)."""
    failures = []
    for i in range(job.num_tasks):
        t = job.task(i)
        t._results_timeout_s = 2 if i == 0 else 0    # the state is final: the results are written
        exc = t.exception()
        if exc is not None:
            failures.append((type(exc).__name__ == "FailedJobError", i, exc, t.paths.stderr))
    if not failures:
        return job.task(0).result(), None, job.task(0).paths.stderr
    _, _, exc, logf = max(failures, key=lambda f: (f[0], -f[1]))  # a raised error first, lowest rank
    return None, _why(str(exc), logf), logf


def _why(text, logf):
    """The most telling line: the job's last `error:` line (the ranks' own), else the exception's."""
    try:
        with open(logf, errors="replace") as f:
            errs = [ln.strip()[7:] for ln in f.read().splitlines()[-300:] if ln.strip().startswith("error: ")]
        if errs:
            return errs[-1][:300]
    except OSError:
        pass
    return _reason(text)


def _rejection(e):
    """Why sbatch (through submitit) refused a job: the last line it printed."""
    msg = str(e).strip().splitlines()
    return msg[-1] if msg else type(e).__name__


def _reason(text):
    """The most telling line of a failed job's exception text (its last 'error' line)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    hits = [ln for ln in lines if "rror" in ln and not ln.startswith(("File ", "raise "))]
    line = (hits or lines or ["unknown error"])[-1]
    return re.sub(r"^(?:[a-z_]\w*\.)+(?=\w*(?:Error|Exception)\b)", "", line)[:300]   # ddp_scratch.errors.X -> X


def _stopped(job, what, state, sig, out, local):
    """One line after a stop: what became of the job and of the run; exit 128 + the signal."""
    first = sig.names[0]
    code = 128 + getattr(signal, first)
    if local:
        done = f"stopped on {first}" + (f" ({job.killed} process(es) killed: asked twice, or no stop within "
                                        f"{STOP_GRACE_S}s)" if job.killed else "")
    else:
        done = (f"cancelled on {first} (scancel {job.job_id}): {state}" if state == "CANCELLED" else
                f"ended {state} before the cancel on {first} (scancel {job.job_id}) took effect" if state in FINAL else
                f"cancel requested on {first} (scancel {job.job_id}); not waiting for its end (state {state or '?'})")
    ck = os.path.join(os.path.abspath(out), "checkpoint.npz")
    try:
        with open(os.path.join(out, "summary.json")) as f:
            s = json.load(f)
        fresh = os.path.getmtime(os.path.join(out, "summary.json")) >= sig.at - 1
    except (OSError, ValueError):
        s, fresh = {}, False
    if fresh and s.get("status") in ("preempted", "interrupted") and os.path.exists(ck):
        run = f"checkpoint {ck} at step {s.get('steps')}: submit again with --resume to continue"
    elif local:         # every process of the job is gone: say what is there, minus half-written temps
        from ..run.checkpoint import left_behind
        run = "no checkpoint written at the stop; " + left_behind(os.path.abspath(out))
    elif os.path.exists(ck):
        run = f"no checkpoint written at the stop; {ck} holds the last periodic one (--resume continues from it)"
    else:
        run = "no checkpoint written"
    print(f"{what} {job.job_id} {done}; {run}", file=sys.stderr, flush=True)
    return code


def add_submit_parser(cmd):
    p = cmd("submit", "submit training as a SLURM job through submitit (or a local submitit job)")
    add_train_args(p)
    p.add_argument("--nodes", type=integer(1, "a number of nodes"), default=1, help="nodes (default 1)")
    add_slurm_resource_args(p, tasks_per_node=1, time=60)
    p.add_argument("--mem", type=_memory, default=None, help="memory per node, e.g. 16G (SLURM's --mem)")
    p.add_argument("--job-name", type=_job_name, default="ddp_scratch", help="the job's name in squeue")
    p.add_argument("--signal-delay", type=integer(0, "seconds"), default=120,
                   help="seconds before the time limit to checkpoint (default 120)")
    p.add_argument("--max-requeue", type=integer(0, "a number of requeues"), default=3,
                   help="requeues after time limits (default 3)")
    p.add_argument("--logs", type=path("a folder for the job's logs"), default=None,
                   help="submitit folder (default OUT/submitit)")
    p.add_argument("--local", action="store_true", help="run through submitit's local executor")
    p.add_argument("--wait", action="store_true",
                   help="follow the job to its end and print its result (exit 0 completed, 1 failed; "
                        "Ctrl-C/SIGTERM cancels the job)")
    return p


# ----------------------------------------------------------------------------- sweep-point

def add_sweep_point_parser(cmd):
    p = cmd("sweep-point", "file a finished run (RUN/summary.json) as a point of a scaling sweep, "
                           "DIR/runs/NAME-MODE-nN-rR.json, as `scaling` does (slurm/sweep_array.sbatch runs it)")
    p.add_argument("run", help="output folder of the finished training run")
    p.add_argument("--into", required=True, metavar="DIR", help="the sweep folder (`launch.py report DIR` reads it)")
    p.add_argument("--mode", choices=["strong", "weak"], required=True)
    p.add_argument("--name", required=True, help="the series: the config's file name without .yaml")
    p.add_argument("--repeat", type=integer(0, "a repeat number"), default=0, help="repeat number of this point (default 0)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a point of another run already filed under the same name")
    p.epilog = ("examples:\n  python launch.py sweep-point runs/weak/points/n2 --into runs/weak --mode weak "
                "--name mlp_digits\n  python launch.py report runs/weak")
    return p


# What makes two filings the same point of one sweep (a re-run of it may replace it; another
# sweep's point may not, or a report would mix two experiments under one name)
POINT_IDENTITY = ("model", "n_params", "global_batch", "steps", "dtype", "backend", "comm")


def _refuse_another_runs_point(dst, rj):
    try:
        with open(dst) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return                     # nothing filed there (or nothing readable to keep)
    if not isinstance(old, dict):
        return
    diff = [f"{k} {old.get(k)!r} there, {rj.get(k)!r} here" for k in POINT_IDENTITY if old.get(k) != rj.get(k)]
    if diff:
        raise UserError(f"sweep-point: {dst} already holds this point of another run ({'; '.join(diff[:3])}): "
                        "file it --into another sweep folder, give another --name or --repeat, or --overwrite to "
                        "replace it")


def sweep_point(a, log=print):
    from ..fsutil import atomic_write_text
    from ..study.report import validate_run
    from .sweep import run_json
    if a.repeat < 0:
        raise UserError(f"sweep-point --repeat: expected a number >= 0, got {a.repeat}")
    if not re.fullmatch(r"[\w.+-]+", a.name):
        raise UserError(f"sweep-point --name: expected a file-name-safe name like mlp_digits, got {a.name!r}")
    path = os.path.join(a.run, "summary.json")
    try:
        with open(path) as f:
            s = json.load(f)
    except FileNotFoundError:
        raise UserError(f"sweep-point: {path} not found (expected the output folder of a finished training run)") from None
    except (OSError, ValueError) as e:
        raise UserError(f"sweep-point: {path} cannot be read as JSON ({e})") from None
    if not isinstance(s, dict) or s.get("status") != "completed":
        raise UserError(f"sweep-point: {path} is a run with status {s.get('status') if isinstance(s, dict) else s!r}, "
                        "expected a completed run (resume it first)")
    n, gb = s.get("world_size"), s.get("global_batch")
    if not s.get("timing") and isinstance(n, int) and isinstance(gb, int):
        raise UserError(f"sweep-point: {path} timed no steps (train.timing_skip skips all the steps it ran: "
                        "raise train.max_steps or lower train.timing_skip)")
    try:
        rj = validate_run(run_json(s, a.mode, a.name, n, a.repeat, gb), path)
    except (KeyError, TypeError, ValueError, UserError) as e:
        raise UserError(f"sweep-point: {path} lacks what a scaling point needs ({type(e).__name__}: {e})") from None
    dst = os.path.join(a.into, "runs", f"{a.name}-{a.mode}-n{n}-r{a.repeat}.json")
    if not getattr(a, "overwrite", False):
        _refuse_another_runs_point(dst, rj)
    try:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
    except OSError as e:
        raise UserError(f"sweep-point --into {a.into}: cannot create {os.path.dirname(dst)} ({e.strerror})") from None
    atomic_write_text(dst, json.dumps(rj, indent=1))
    log(f"{a.run}: {n} rank(s), global batch {gb}, {rj['samples_per_s']:.4g} samples/s -> {dst}")
    return 0


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
        try:
            job = make_executor(ns).submit(TrainTask(argv[argv.index("train") + 1], out, sets,
                                                     overwrite="--overwrite" in argv, quiet="--quiet" in argv))
        except Exception as e:   # sbatch rejected it (no controller, a bad partition, ...): one line
            shutil.rmtree(os.path.join(out, "submitit"), ignore_errors=True)     # the pickles of a job never queued
            raise UserError(f"scaling --slurm: the job of the {n}-rank point was not accepted: {_rejection(e)}") from None
        print(f"  SLURM job {job.job_id} ({nodes} node(s) x {per_node} task(s)), logs {job.paths.stderr}", flush=True)
        try:
            job.results()
        except Exception as e:
            print(f"  job {job.job_id} failed: {_reason(str(e))}", flush=True)
            return 1
        return 0
    return launch
