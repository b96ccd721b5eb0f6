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
