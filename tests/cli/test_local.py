"""`launch.py local -n N`: spawns mpiexec with the same interpreter, forwards the exit status, and
one Ctrl-C (SIGINT to the launcher) ends every rank."""
import os
import signal
import subprocess
import sys
import time

from conftest import LAUNCH, ROOT


def test_local_forwards_exit_status(tmp_path, launch):
    r = launch("local", "-n", 2, "experiments/mlp_digits.yaml", "--out", tmp_path, "--quiet",
               "--set", "train.max_steps=4")
    assert r.returncode == 0, r.stderr
    r = launch("local", "-n", 2, "experiments/mlp_digits.yaml", "--out", tmp_path / "b", "--quiet",
               "--set", "train.batch_size=1")
    assert r.returncode == 2 and r.stderr.count("error:") == 1


def test_one_ctrl_c_ends_all_ranks(tmp_path):
    out = tmp_path / "o"
    p = subprocess.Popen([sys.executable, LAUNCH, "local", "-n", "2", "experiments/mlp_digits.yaml",
                          "--out", str(out), "--quiet", "--set", "train.epochs=100000"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, env=dict(os.environ, WANDB_MODE="disabled"))
    try:
        deadline = time.time() + 30
        while time.time() < deadline and not _ranks(out):
            time.sleep(0.2)
        assert len(_ranks(out)) == 2
        time.sleep(0.5)
        p.send_signal(signal.SIGINT)                 # what a terminal's Ctrl-C sends to the launcher
        rc = p.wait(timeout=20)
        assert rc == 130
        time.sleep(0.5)
        assert _ranks(out) == [], "ranks outlived the Ctrl-C"
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        for pid in _ranks(out):
            os.kill(pid, signal.SIGKILL)


def _ranks(out):
    r = subprocess.run(["pgrep", "-f", "--", f"^\\S*python\\S* \\S*launch.py train .*--out {out}"], capture_output=True, text=True)
    return [int(x) for x in r.stdout.split()]


def test_the_command_line_sets_threads_before_numpy_is_imported():
    """NumPy's BLAS reads its thread count once, when NumPy is imported: the command line must
    not import it before set_threads ran (2 ranks x all cores each thrashed a 2-core machine:
    a weak-scaling step went from 11 ms to 170 ms)."""
    import subprocess
    import sys
    from conftest import ROOT
    code = ("import sys; sys.path.insert(0, %r); import ddp_scratch.cli.main as m; "
            "assert 'numpy' not in sys.modules, 'numpy imported by the command line'; "
            "m.set_threads(1); import numpy; print('ok')") % ROOT
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_threads_take_effect_in_a_training_run(tmp_path):
    """The BLAS of a `train` process runs the thread count asked for (read back from OpenBLAS)."""
    import subprocess
    import sys
    from conftest import LAUNCH, ROOT
    code = ("import sys, runpy; sys.argv = [%r, 'train', 'experiments/mlp_digits.yaml', '--quiet', '--out', %r, "
            "'--set', 'train.max_steps=1', '--set', 'train.threads=1']; "
            "import ddp_scratch.cli.main as m; m.main(sys.argv[1:]); "
            "import numpy.__config__ as c, ctypes, glob, os; "
            "libs = [l for l in open('/proc/self/maps').read().split() if 'openblas' in l and l.endswith('.so')]; "
            "lib = ctypes.CDLL(libs[0]); f = [getattr(lib, n) for n in ('scipy_openblas_get_num_threads64_', "
            "'openblas_get_num_threads64_', 'openblas_get_num_threads') if hasattr(lib, n)][0]; print(f())") % (LAUNCH, str(tmp_path / "t"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, OMP_NUM_THREADS="", OPENBLAS_NUM_THREADS=""))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "1", r.stdout


def _filtered(text, launch=None):
    """What Launch._filter passes through of `text` (as mpiexec would write it), and the Launch."""
    import io
    import threading
    from ddp_scratch.cli.local import Launch
    launch = launch or Launch(["true"])
    r, w = os.pipe()
    out = io.TextIOWrapper(io.BytesIO(), write_through=True)
    t = threading.Thread(target=launch._filter, args=(os.fdopen(r, "rb"), out))
    t.start()
    os.write(w, text.encode())
    os.close(w)
    t.join(5)
    return out.buffer.getvalue().decode(), launch


HYDRA_KILLED = """step 5/10: loss 0.1

===================================================================================
=   BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES
=   PID 4242 RUNNING AT node7
=   EXIT CODE: 9
=   CLEANING UP REMAINING PROCESSES
=   YOU CAN IGNORE THE BELOW CLEANUP MESSAGES
===================================================================================
YOUR APPLICATION TERMINATED WITH THE EXIT STRING: Killed (signal 9)
This typically refers to a problem with your application.
Please see the FAQ page for debugging suggestions
"""


def test_the_launcher_turns_mpiexecs_banner_into_one_line(capsys):
    from ddp_scratch.cli.local import Launch
    passed, launch = _filtered(HYDRA_KILLED)
    assert passed == "step 5/10: loss 0.1\n"
    launch.ranks = {4242: 3, 4243: 0}
    assert launch._status(9) == 137
    assert capsys.readouterr().err == ("error: rank 3 (pid 4242 on node7) was killed by SIGKILL; "
                                       "mpiexec ended the other ranks (exit status 137)\n")
    launch = Launch(["true"])                     # a cleaned-up rank's SIGTERM banner does not win
    _filtered(HYDRA_KILLED.replace("4242", "5000").replace("signal 9", "signal 15") + HYDRA_KILLED, launch)
    assert launch.banner == {"pid": 4242, "host": "node7", "signal": 9}


def test_the_launcher_holds_back_mpich_error_stacks_and_ctrl_c_chatter(capsys):
    text = ("[mpiexec@vm] Sending Ctrl-C to processes as requested\n"
            "[mpiexec@vm] Press Ctrl-C again to force abort\n"
            "[proxy:0@vm] HYD_pmcd_pmip_control_cmd_cb (pmip_cb.c:490): assert (!closed) failed\n"
            "Abort(74001807) on node 0 (rank 0 in comm 0): Fatal error in internal_Allreduce_c: Other MPI error\n"
            "MPID_Allreduce(483)...............................: \n"
            "interrupted: checkpoint written at step 12; continue with --resume\n")
    passed, launch = _filtered(text)
    assert passed == "interrupted: checkpoint written at step 12; continue with --resume\n"
    assert len(launch.mpi_said) == 2
    launch.mark, launch.end = 0, 0
    assert launch._status(134) == 134          # nothing else said: MPI's first line, as one error line
    assert capsys.readouterr().err.startswith("error: the MPI library ended the job (exit status 134): Abort(")


def test_a_rank_the_watcher_never_saw_is_named_when_every_other_rank_saw_it_go(capsys):
    """Busy machine: rank 1 killed before the launcher found its process, no banner; rank 0
    reported the failed collective. Of 2 ranks the one that said nothing went first; of 3 ranks
    with one reporter, two are silent: no name is guessed."""
    from ddp_scratch.cli.local import Launch
    text = "Abort(543763855) on node 0 (rank 0 in comm 0): Fatal error in internal_Allreduce_c: Other MPI error\n"
    for n, want in ((2, "error: rank 1 ended first, without a word"), (3, "error: the MPI library ended the job")):
        launch = Launch(["mpiexec", "-n", str(n), "python", "launch.py"])
        _filtered(text, launch)
        launch.mark, launch.end = 0, 0
        assert launch._status(143) == 143
        assert capsys.readouterr().err.startswith(want)


def test_a_progress_bar_passes_at_once():
    passed, _ = _filtered("\r[##   ] 1/10\r[#### ] 2/10")
    assert passed == "\r[##   ] 1/10\r[#### ] 2/10"
