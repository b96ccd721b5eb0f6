"""The dev cluster runs real MPI jobs: sbatch + srun --mpi=pmi2, and submitit."""
import subprocess
import sys
import time

import pytest

HELLO = ("from mpi4py import MPI; c = MPI.COMM_WORLD; "
         "print(c.Get_rank(), c.Get_size(), c.allreduce(1), flush=True)")


@pytest.mark.timeout(120)
def test_sbatch_srun_pmi2_forms_a_two_rank_world(slurm, tmp_path):
    out = tmp_path / "hello.out"
    script = tmp_path / "hello.sbatch"
    script.write_text(f"""#!/bin/bash
#SBATCH --job-name=hello
#SBATCH --ntasks=2
#SBATCH --time=5
#SBATCH --output={out}
#SBATCH --signal=B:USR1@60
srun --mpi=pmi2 -n 2 {sys.executable} -c "{HELLO}"
""")
    job = slurm.sbatch(script)
    assert slurm.wait(job, timeout=60) == "COMPLETED", out.read_text()
    lines = sorted(line for line in out.read_text().splitlines() if line.strip())
    assert lines == ["0 2 2", "1 2 2"]
    # what submitit asks: JobID|State|NodeList for a finished job (slurm/bin/sacct on PATH)
    r = subprocess.run(["sacct", "-o", "JobID,State,NodeList", "--parsable2", "-j", job],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    head, row = r.stdout.splitlines()[0], r.stdout.splitlines()[-1]
    assert head == "JobID|State|NodeList"
    assert row.startswith(f"{job}|COMPLETED|")


def _executor(folder, tasks):
    submitit = pytest.importorskip("submitit")
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_python=sys.executable)
    # timeout_min well above submitit's USR2 lead (90 s): Slurm may send --signal up to 60 s
    # early, and a USR2 makes submitit treat the job as timed out (and requeue a Checkpointable).
    ex.update_parameters(nodes=1, tasks_per_node=tasks, cpus_per_task=1, timeout_min=10,
                         slurm_srun_args=["--mpi=pmi2"])
    return ex


def _wait_done(job, timeout):
    deadline = time.monotonic() + timeout
    while not job.done(force_check=True):       # force: ask sacct now, not on submitit's backoff
        assert time.monotonic() < deadline, f"submitit job {job.job_id} not done after {timeout}s"
        time.sleep(0.5)


@pytest.mark.timeout(120)
def test_submitit_two_tasks_return_their_mpi_ranks(slurm, tmp_path):
    def hello(x):       # a local function: cloudpickle ships it by value
        from mpi4py import MPI
        c = MPI.COMM_WORLD
        return c.Get_rank(), c.Get_size(), c.allreduce(x)

    job = _executor(tmp_path / "%j", tasks=2).submit(hello, 1)
    slurm.submitted.append(job.job_id)
    _wait_done(job, 90)
    # several tasks: results(), one per task (result() refuses jobs with subtasks)
    assert job.results() == [(0, 2, 2), (1, 2, 2)]
    assert slurm.wait(job.job_id, timeout=60) == "COMPLETED"
    assert job.get_info(mode="force")["State"] == "COMPLETED"    # submitit's own sacct call


@pytest.mark.timeout(120)
def test_submitit_sees_a_crashed_job_as_finished(slurm, tmp_path):
    """A task that dies without writing its result: only sacct can tell submitit it ended."""
    submitit = pytest.importorskip("submitit")

    def crash():
        import os
        os._exit(3)

    job = _executor(tmp_path / "%j", tasks=1).submit(crash)
    slurm.submitted.append(job.job_id)
    _wait_done(job, 60)
    assert job.get_info(mode="force")["State"] == "FAILED"
    job._results_timeout_s = 0     # else result() waits 15 s for a result file (NFS grace), as submitit's tests do
    with pytest.raises(submitit.core.utils.UncompletedJobError):
        job.result()


@pytest.mark.timeout(150)
def test_submitit_checkpoint_requeue_restarts_the_mpi_job(slurm, tmp_path):
    """submitit's preemption path: rank 0 checkpoints and requeues while rank 1 still runs.
    The restarted job reuses the job id; without the dev cluster's Epilog (stale MPICH
    /dev/shm segment) its MPI_Init failed and the job hung."""
    submitit = pytest.importorskip("submitit")

    class Count(submitit.helpers.Checkpointable):
        def __init__(self):
            self.i = 0

        def __call__(self, n):
            import os
            import time
            from mpi4py import MPI
            c = MPI.COMM_WORLD
            while self.i < n:
                time.sleep(0.1)
                self.i += 1
            return c.Get_rank(), c.Get_size(), os.environ.get("SLURM_RESTART_COUNT", "0")

    job = _executor(tmp_path / "%j", tasks=2).submit(Count(), 50)
    slurm.submitted.append(job.job_id)
    deadline = time.monotonic() + 60
    while job.get_info(mode="force").get("State") != "RUNNING":
        assert time.monotonic() < deadline, "submitit job did not start"
        time.sleep(0.3)
    time.sleep(2)           # both tasks have installed submitit's signal handlers
    job._interrupt()        # as preemption: SIGTERM, then USR2 -> checkpoint() + scontrol requeue
    # Not job.done(): the requeue kills the job at once, sometimes before submitit's own
    # `scontrol requeue` returns, and submitit then leaves an error result until the restarted
    # attempt overwrites it. The job leaving the queue is the reliable end.
    assert slurm.wait(job.job_id, timeout=120) == "COMPLETED"
    assert job.results() == [(0, 2, "1"), (1, 2, "1")]


@pytest.mark.timeout(120)
def test_sacct_shim_answers_for_array_jobs(slurm, tmp_path):
    """slurm/bin/sacct on array jobs: `-j ARRAY` lists every element, `-j ARRAY_N` one, in sacct's
    table and in the --parsable2 form submitit reads (the table once failed: 'Unknown type
    ArrayJobId'); a pending array cancelled as a whole is `ARRAY_[1-3]`, which submitit expands."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    def sacct(*args):
        r = subprocess.run(["sacct", *args], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        return r.stdout.splitlines()

    def submitit_view(job):     # what submitit's watcher makes of `sacct -o JobID,State,NodeList --parsable2`
        out = "\n".join(sacct("-o", "JobID,State,NodeList", "--parsable2", "-j", job))
        return {k: v["State"] for k, v in SlurmInfoWatcher().read_info(out).items()}

    job = slurm.sbatch("--array=1-2", f"--output={tmp_path}/a-%A_%a.out", "--wrap", "true")
    assert slurm.wait(job, timeout=60) == {f"{job}_1": "COMPLETED", f"{job}_2": "COMPLETED"}
    head, dashes, *rows = sacct("-j", job)
    assert head.split() == ["JobID", "JobName", "Partition", "Account", "AllocCPUS", "State", "ExitCode"]
    assert set(dashes) == {"-", " "}
    assert sorted((r.split()[0], r.split()[-2]) for r in rows) == [(f"{job}_1", "COMPLETED"), (f"{job}_2", "COMPLETED")]
    _, _, row = sacct("-j", f"{job}_2", "-o", "JobID%15,State,ExitCode")
    assert row.split() == [f"{job}_2", "COMPLETED", "0:0"]
    assert row.index("COMPLETED") == 15 + 1 + (10 - len("COMPLETED"))     # widths: JobID%15, State 10
    assert submitit_view(job) == {f"{job}_1": "COMPLETED", f"{job}_2": "COMPLETED"}
    assert submitit_view(f"{job}_1") == {f"{job}_1": "COMPLETED"}
    assert sacct("-n", "-P", "-o", "JobID,ArrayJobID,ArrayTaskID", "-j", f"{job}_1") == [f"{job}_1|{job}|1"]

    held = slurm.sbatch("--array=1-3", "--hold", "--output=/dev/null", "--wrap", "true")
    assert submitit_view(held) == {f"{held}_{i}": "PENDING" for i in (1, 2, 3)}
    slurm.scancel(held)
    assert slurm.wait(held, timeout=30) == {f"{held}_[1-3]": "CANCELLED"}
    assert submitit_view(f"{held}_2") == {f"{held}_{i}": "CANCELLED" for i in (1, 2, 3)}
    assert [r.split()[0] for r in sacct("-n", "-j", held)] == [f"{held}_[1-3]"]
