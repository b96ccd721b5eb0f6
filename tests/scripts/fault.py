"""Run `launch.py train` with a fault injected into ONE rank, for the reliability tests:
    mpiexec -n 2 python tests/scripts/fault.py KIND RANK STEP -- <launch.py train args>
KIND: raise (uncaught error), stop (SIGSTOP itself: frozen), kill (SIGKILL itself),
      nan (poison its parameters for good), nanloss (one non-finite loss), diverge (perturb its parameters: silent divergence),
      sleep (stuck in I/O: sleeps forever), stop-eval (SIGSTOP itself in its first validation pass,
      where the collectives are an evaluation's, not the gradient all-reduce)."""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from ddp_scratch.cli import main as cli  # noqa: E402
from ddp_scratch.run import trainer as train  # noqa: E402

kind, rank, at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
argv = sys.argv[sys.argv.index("--") + 1:]
orig = train.Trainer.train_step


def faulty(self, epoch, i):
    if self.comm.rank == rank and self.step == at:
        if kind == "raise":
            raise RuntimeError("injected failure")
        if kind == "stop":
            os.kill(os.getpid(), signal.SIGSTOP)
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "sleep":
            time.sleep(3600)
        if kind == "diverge":
            self.space.params[0] += 1e-3
        if kind == "nan":
            self.space.params[:] = float("nan")
        if kind == "nanloss":   # one poisoned step on one rank: the skip policy drops it everywhere
            loss = self.model.loss
            self.model.loss = lambda *a: (float("nan"), loss(*a)[1])
            try:
                return orig(self, epoch, i)
            finally:
                self.model.loss = loss
    return orig(self, epoch, i)


def frozen_evaluation(self, *a, **kw):
    if self.comm.rank == rank:
        os.kill(os.getpid(), signal.SIGSTOP)
    return orig_eval(self, *a, **kw)


train.Trainer.train_step = faulty
if kind == "stop-eval":
    orig_eval = train.Trainer._evaluate
    train.Trainer._evaluate = frozen_evaluation
sys.exit(cli.main(argv))
