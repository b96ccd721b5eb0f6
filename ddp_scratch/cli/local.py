"""Processes on this machine: threads per rank, finding mpiexec, `launch.py local -n N`, and
forwarding a launcher's exit status and Ctrl-C to every rank.

Size: a little over 400 lines because Launch is one piece: what mpiexec prints, the order in which
the ranks end and the signals that reach the launcher together decide the one line a person reads
when a job goes wrong; split, those three would have to share its state across modules."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

from ..errors import UserError

# The entry point every spawned rank runs (also when we were started as `ddp-scratch`).
LAUNCH_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "launch.py")


def local_ranks():
    for var in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"):
        v = os.environ.get(var, "")
        if v.isdigit():
            return int(v)
    v = os.environ.get("SLURM_STEP_TASKS_PER_NODE", "")   # e.g. "2(x3)" or "2,1"
    if v[:1].isdigit():
        return int(v.split("(")[0].split(",")[0])
    return 1


def set_threads(requested=0):
    """BLAS/OpenMP threads per rank: threads x ranks on a node <= cores. Must run before numpy loads."""
    cores = cores_here()
    n = requested or int(os.environ.get("DDP_THREADS", 0)) or max(1, cores // local_ranks())
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        if var == "NUMBA_NUM_THREADS" and _numba_pool_started():
            # numba re-reads this variable at its next compile and raises if it differs from the
            # pool it started (a second command in one process: the tests' in-process main()):
            # keep the pool, launch on n of its threads instead
            from ..nn import jit
            jit.limit_threads(n)
            continue
        os.environ[var] = str(n)
    return n


def _numba_pool_started():
    par = sys.modules.get("numba.np.ufunc.parallel")
    return bool(getattr(par, "_is_initialized", False))


def cores_here():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def warn_if_oversubscribed(ranks, threads, what):
    """One warning line when ranks x threads exceed this machine's cores (they would share them)."""
    cores = cores_here()
    if ranks * threads > cores:
        print(f"warning: {what}: {ranks} rank(s) x {threads} thread(s) = {ranks * threads} > {cores} cores here; "
              "they share cores, so it runs slower and its timings measure that", file=sys.stderr, flush=True)


def find_mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else shutil.which("mpiexec") or shutil.which("mpirun")


def cmd_local(a):
    from .checks import check_rank_count, check_rank_memory, preflight
    if a.ranks < 1:
        raise UserError(f"local -n: expected a number of ranks >= 1, got {a.ranks}")
    check_rank_count(a.ranks, cores_here(), "local -n")
    cfg, out = preflight(a, a.ranks)        # fail fast, once, before starting N processes
    check_rank_memory(cfg, a.ranks, "local -n")
    warn_if_oversubscribed(a.ranks, cfg.train.threads or max(1, cores_here() // a.ranks), "local")
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise UserError("local: no mpiexec found (pip install mpich, or load your cluster's MPI module)")
    argv = [mpiexec, "-n", str(a.ranks), sys.executable, LAUNCH_PY, "train", a.config, "--out", out]
    for o in a.overrides:
        argv += ["--set", o]
    argv += [f for f, on in (("--resume", a.resume), ("--overwrite", a.overwrite), ("--quiet", a.quiet)) if on]
    if a.stop_at_step:
        argv += ["--stop-at-step", str(a.stop_at_step)]
    return run_forwarding(argv, out)


# Signals a launcher passes on to the job it started (mpiexec forwards INT, TERM and USR1 to
# every rank). HUP and USR2 are passed as TERM and USR1: mpiexec itself would die of them and
# leave the ranks without a stop request.
FORWARD = {"SIGINT": "SIGINT", "SIGTERM": "SIGTERM", "SIGHUP": "SIGTERM", "SIGUSR1": "SIGUSR1", "SIGUSR2": "SIGUSR1"}
SIGNAL_EXIT = {"SIGINT": 130}            # the ranks' exit status after a clean stop (else 75)


_received = []          # every stop signal this process got since its first Launch, in order
_current = []           # the Launch whose job is running now (at most one)


def _stat(pid):
    """The fields of /proc/PID/stat after the command name (state first), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _exit_signal(pid):
    """The signal that ended process `pid`, if it is still a zombie (field 52 of its stat)."""
    fields = _stat(pid)
    return (int(fields[49]) & 0x7F or None) if fields and fields[0] == "Z" and len(fields) > 49 else None


def _zombie(pid):
    fields = _stat(pid)
    return fields is None or fields[0] == "Z"


MPICH_SEGMENT = r"/dev/shm/mpich_(?:shm|vci)_\S+"    # MPICH's shared memory, as /proc/PID/maps names it


def segments_of(pids):
    """The MPICH shared-memory segments the processes `pids` map (killed ranks never unlink them)."""
    found = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as f:
                found.update(re.findall(MPICH_SEGMENT, f.read()))
        except OSError:
            pass
    return found


def _signal_all(pids, sig):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def kill_job(find_pids, segments=()):
    """SIGKILL every process `find_pids()` names; -> (the pids, the segments to unlink once they are
    gone). They are frozen first (SIGSTOP), so that none ends, maps a new segment or is ended by
    another (mpiexec's proxy) before its maps are read: else its segment stays in /dev/shm."""
    pids = find_pids()
    _signal_all(pids, signal.SIGSTOP)
    pids = sorted(set(pids) | set(find_pids()))
    shm = set(segments) | segments_of(pids)
    _signal_all(pids, signal.SIGKILL)
    return pids, shm


def unlink_all(segments):
    for segment in segments:
        try:
            os.unlink(segment)
        except OSError:
            pass


def signals_since(mark):
    """Names of the stop signals received after `mark` = a len(received_signals()) taken earlier."""
    return _received[mark:]


def signal_count():
    return len(_received)


class Interrupted(KeyboardInterrupt):
    """A stop signal that came while no job of ours was running: this process stops itself."""

    def __init__(self, name):
        super().__init__(f"stopped by {name}")
        self.code = 130 if name == "SIGINT" else 128 + getattr(signal, name)


def _on_signal(signum, frame):
    name = signal.Signals(signum).name
    _received.append(name)
    if _current:
        _current[0]._forward(name)
    else:
        raise Interrupted(name)


def _install_handlers():
    """Once per process, and for good: a signal that comes while no job runs stops this process
    through `Interrupted` (one line, no traceback), never by the default action mid-report."""
    if signal.getsignal(signal.SIGINT) is not _on_signal:
        for name in FORWARD:
            signal.signal(getattr(signal, name), _on_signal)


class Launch:
    """A launcher (mpiexec) run in its own session, so the terminal's Ctrl-C reaches only us and
    we decide what the ranks get: the first INT/TERM/HUP/USR asks them to checkpoint and stop,
    a second signal ends them at once (and removes their shared memory). mpiexec's multi-line
    banners are replaced by one line naming the rank that died and its signal."""

    _count = 0

    def __init__(self, argv, mpi=True, cwd=None, env=None, out=None):
        self.argv, self.mpi, self.cwd, self.extra_env = argv, mpi, cwd, env or {}
        self.out = out              # the run's output folder, when the job is one training run
        Launch._count += 1
        self.token = f"{os.getpid()}.{Launch._count}"      # marks the ranks of this job (environment)
        self.mark = None            # where this job's signals start in _received
        self.proc = None
        self.ranks = {}             # pid -> rank, of the job's rank processes (scanned while alive)
        self.banner = {}
        self.mpi_said, self.said_error = [], False      # MPI's own error lines (held back); ours
        self.killed = False
        self.gone = {}              # pid -> signal that ended it (None: unknown)
        self.gone_batches = []      # pids in the order they ended, grouped by the watcher's wake-ups
        self.shm, self.shm_read = set(), set()   # MPICH segments the ranks mapped; ranks looked at

    @property
    def signals(self):
        """Names of the signals received while this job ran."""
        return [] if self.mark is None else _received[self.mark:self.end]

    def run(self):
        import threading
        _install_handlers()         # before the job exists: no window in which a signal kills us
        self.mark, self.end = len(_received), None
        env = dict(os.environ, DDP_LAUNCHER=self.token, **self.extra_env)
        if sys.stderr.isatty():         # the ranks write into pipes: tell rank 0 a person is watching
            env["DDP_PROGRESS"] = "tty"
            env.setdefault("COLUMNS", str(shutil.get_terminal_size().columns))
        pipe = subprocess.PIPE if self.mpi else None
        _current[:] = [self]
        readers = []
        try:
            try:
                proc = self.proc = subprocess.Popen(self.argv, start_new_session=True, env=env, stdout=pipe,
                                                    stderr=pipe, cwd=self.cwd)
            except OSError as e:
                raise UserError(f"cannot start {self.argv[0]}: {e.strerror or e}") from None
            for name in self.signals:           # arrived while the job was being started
                self._forward(name, replay=True)
            if self.mpi:                        # its two streams, and the ranks' ends
                readers = [threading.Thread(target=self._filter, args=(src, dst), daemon=True)
                           for src, dst in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr))]
                readers.append(threading.Thread(target=self._watch, daemon=True))
                for r in readers:
                    r.start()
            while proc.poll() is None:
                if self.mpi:
                    self._scan()
                    self._note_segments()
                try:
                    proc.wait(timeout=0.25)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            _current.clear()
            self.end = len(_received)
        for r in readers:
            r.join(timeout=5)
        return self._status(proc.returncode)

    def _forward(self, name, replay=False):
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        count = len(self.signals) if not replay else 1
        if count == 1:
            proc.send_signal(getattr(signal, FORWARD[name]))
        else:                              # asked twice: do not wait for a clean stop
            self._kill()

    def _kill(self):
        """SIGKILL the ranks and mpiexec, and remove the MPICH shared-memory segments the ranks
        had mapped (a killed rank never unlinks them: /dev/shm would fill up)."""
        self.killed = True

        def job():
            self._scan()
            return [*self.ranks, self.proc.pid]
        _, shm = kill_job(job, self.shm)
        for pid in self.ranks:             # gone before their segments go
            for _ in range(50):
                if not os.path.exists(f"/proc/{pid}") or _zombie(pid):
                    break
                time.sleep(0.02)
        unlink_all(shm)

    def _note_segments(self):
        """The MPICH shared-memory segments the job's ranks map, noted once per rank while they live
        (a rank that has already ended by the time of a kill can no longer be asked)."""
        for pid in self.ranks:
            if pid not in self.shm_read:
                found = segments_of([pid])
                if found:
                    self.shm.update(found)
                    self.shm_read.add(pid)

    def _scan(self):
        """pid -> rank of the job's ranks (each in a session of its own under mpiexec's proxy)."""
        try:
            pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
        except OSError:
            return
        for pid in pids:
            if pid in self.ranks:
                continue
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = f.read().split(b"\0")
            except OSError:
                continue
            if f"DDP_LAUNCHER={self.token}".encode() not in env:
                continue
            rank = next((e.split(b"=", 1)[1] for e in env if e.startswith((b"PMI_RANK=", b"OMPI_COMM_WORLD_RANK="))), None)
            if rank is not None and rank.isdigit():
                self.ranks[pid] = int(rank)

    NOISE = ("YOUR APPLICATION TERMINATED", "This typically refers", "Please see the FAQ", "Ctrl-C caught",
             "[proxy:", "[mpiexec@")
    # MPICH's own report of a failed collective after a rank died: its 'Abort(...) on node' line
    # and an error stack of 'function(line)....: text' frames
    MPI_STACK = (r"^(Abort\(\d+\) on node|\[?\w+\(\d+\)\.*:|\(unknown\)\(\):|\[unset\]:|"
                 r"error: rank \d+: an MPI collective failed)")

    def _filter(self, src, dst):
        """Pass one of the job's streams through, minus mpiexec's banners and Ctrl-C chatter
        (parsed into self.banner). Pieces end at a newline or a carriage return, so a live
        progress bar passes at once; a reader that went away (| head) is drained, never blocks."""
        buf, process = b"", {}
        while True:
            chunk = os.read(src.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            pieces = re.split(rb"(?<=[\r\n])", buf)
            buf = pieces.pop()                        # the unfinished rest
            for raw in pieces:
                text = raw.decode(errors="replace").strip()
                # a banner names a process and how it ended; a killed rank's banner wins over
                # those of ranks mpiexec cleaned up with SIGTERM after it
                m = re.match(r"=\s+PID (\d+) RUNNING AT (\S+)", text)
                if m:
                    process = {"pid": int(m.group(1)), "host": m.group(2)}
                m = re.search(r"EXIT STRING: .*\(signal (\d+)\)", text)
                if m:
                    seen = dict(process, signal=int(m.group(1)))
                    if "signal" not in self.banner or (self.banner["signal"] == 15 and seen["signal"] != 15):
                        self.banner = seen
                if re.match(self.MPI_STACK, text) or "application called MPI_Abort" in text:
                    self.mpi_said.append(text)
                    continue
                if text.startswith("=") or text.startswith(self.NOISE) or (raw.strip() == b"" and raw != b"\r"):
                    continue
                if text.startswith("error:"):
                    self.said_error = True
                try:
                    dst.buffer.write(raw)
                    dst.flush()
                except (OSError, ValueError):
                    pass
        if buf:
            try:
                dst.buffer.write(buf)
                dst.flush()
            except (OSError, ValueError):
                pass

    def _watch(self):
        """Note the order in which rank processes end, and how, as it happens (a thread waiting on
        pidfds): when a killed rank makes another fail first, mpiexec may name no one. A dead
        rank's exit status can be read from /proc while it is a zombie, until its parent reaps it."""
        import select
        fds = {}
        poller = select.poll()
        while self.proc.poll() is None:
            for pid in list(self.ranks):
                if pid not in fds and pid not in self.gone:
                    try:
                        fds[os.pidfd_open(pid)] = pid
                    except (OSError, AttributeError):
                        self.gone.setdefault(pid, None)
                        continue
                    poller.register(next(fd for fd, p in fds.items() if p == pid), select.POLLIN)
            batch = []
            for fd, _ in poller.poll(50):
                pid = fds.pop(fd)
                poller.unregister(fd)
                self.gone.setdefault(pid, _exit_signal(pid))
                batch.append(pid)
                os.close(fd)
            if batch:
                self.gone_batches.append(batch)       # ended in one wake-up: their order is unknown
        for fd in fds:
            os.close(fd)

    def _reporters(self):
        """Ranks that reported an MPI failure: alive to see another die, so not the first to end."""
        reporters = set()
        for line in self.mpi_said:
            m = re.search(r"\(rank (\d+) in comm 0\)", line) or re.match(r"error: rank (\d+):", line)
            if m:
                reporters.add(int(m.group(1)))
        return reporters

    def _world_size(self):
        """N of the job's `mpiexec -n N` (None when the command line does not say)."""
        for flag, value in zip(self.argv, self.argv[1:]):
            if flag in ("-n", "-np") and value.isdigit():
                return int(value)
        return None

    def _first_gone(self):
        """The pids of the rank(s) that ended first (several when they ended in one wake-up of the
        watcher). Ranks that reported an MPI failure were alive to see another die: not them."""
        reporters = self._reporters()
        for batch in self.gone_batches:
            candidates = [pid for pid in batch if self.ranks.get(pid) not in reporters]
            if candidates:
                return candidates
        return []

    def _status(self, rc):
        if self.killed:                    # asked twice: the ranks were killed
            first = self.signals[0]
            left = ""
            if self.out is not None:        # said from what is there (a write killed halfway is removed)
                from ..run.checkpoint import left_behind
                left = "; " + left_behind(self.out)
            sys.stderr.write(f"stopped at once by a second signal ({', '.join(self.signals)}): the ranks were "
                             f"killed{left}\n")
            return 130 if first == "SIGINT" else 128 + getattr(signal, first)
        sig = self.banner.get("signal")
        if sig and not self.signals:
            pid = self.banner.get("pid")
            rank = self.ranks.get(pid)
            who = f"rank {rank}" if rank is not None else "a rank"
            try:
                signame = signal.Signals(sig).name
            except ValueError:
                signame = f"signal {sig}"
            sys.stderr.write(f"error: {who} (pid {pid} on {self.banner.get('host', '?')}) was killed by "
                             f"{signame}; mpiexec ended the other ranks (exit status {128 + sig})\n")
            return 128 + sig
        first = self._first_gone()
        if rc not in (0, 75, 130) and not self.signals and first and (self.mpi_said or not self.said_error):
            host = os.uname().nodename
            if len(first) == 1:
                pid, sig = first[0], self.gone[first[0]]
                how = (f"was killed by {signal.Signals(sig).name}" if sig else
                       "ended first, without a word (killed by a signal or crashed)")
                sys.stderr.write(f"error: rank {self.ranks[pid]} (pid {pid} on {host}) {how}; "
                                 f"mpiexec ended the other ranks (exit status {128 + sig if sig else rc})\n")
                return 128 + sig if sig else rc
            who = " and ".join(f"rank {self.ranks[p]} (pid {p})" for p in sorted(first, key=self.ranks.get))
            sys.stderr.write(f"error: {who} on {host} ended at the same moment, one of them first (killed by a "
                             f"signal or crashed); mpiexec ended the job (exit status {rc})\n")
            return rc
        n, reporters = self._world_size(), self._reporters()
        silent = [r for r in range(n or 0) if r not in reporters]
        if rc not in (0, 75, 130) and not self.said_error and not self.signals and reporters and len(silent) == 1:
            # the watcher never saw it (a rank killed before the launcher found it, on a busy
            # machine): every other rank reported the failure, so the one that did not went first
            sys.stderr.write(f"error: rank {silent[0]} ended first, without a word (killed by a signal or "
                             f"crashed): the other rank(s) saw it go; mpiexec ended the job (exit status {rc})\n")
            return rc
        if rc not in (0, 75, 130) and not self.said_error and self.mpi_said and not self.signals:
            sys.stderr.write(f"error: the MPI library ended the job (exit status {rc}): {self.mpi_said[0][:300]}\n")
        return rc


def run_forwarding(argv, out=None):
    """Run mpiexec with our signal forwarding; its exit status (see Launch)."""
    return Launch(argv, out=out).run()
