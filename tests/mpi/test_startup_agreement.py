"""A set-up failure on ONE rank (its data, its device, its checkpoint) must end every rank
promptly with one error, not leave the healthy ranks inside the parameter broadcast while the
failed one waits in the agreement (mismatched collectives: a hang until the watchdog)."""
import tempfile
import time

import pytest
from mpi4py import MPI

from ddp_scratch.parallel.world import Comm
from ddp_scratch.config import load_config
from ddp_scratch.errors import UserError
from ddp_scratch.run.trainer import Options, Trainer


class FailsOnRank1(Trainer):
    def _setup(self):
        if self.comm.rank == 1:
            raise UserError("data.path: rank 1 cannot read its shard (simulated)")
        super()._setup()


class SharedSetupFails(Trainer):
    def _setup_shared(self):
        raise UserError("comm.backend: simulated failure of the collective set-up")


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("cls,who", [(FailsOnRank1, 1), (SharedSetupFails, 0)])
def test_one_failing_rank_ends_all_ranks_quickly(cls, who):
    rank = MPI.COMM_WORLD.Get_rank()
    cfg = load_config(None, ["train.max_steps=3", "logging.progress=false"])
    t0 = time.monotonic()
    # comm.timeout_s=30: a mismatched collective would sit here until the watchdog, far longer
    with pytest.raises((UserError, SystemExit)) as e:
        Trainer.__new__(cls).__init__(cfg, Options(out=tempfile.mkdtemp(), quiet=True), comm=Comm(timeout_s=30))
    took = time.monotonic() - t0
    reported = MPI.COMM_WORLD.allgather(isinstance(e.value, UserError))
    print(f"rank {rank}: {type(e.value).__name__} after {took:.2f} s")
    assert reported == [r == who for r in range(MPI.COMM_WORLD.Get_size())]   # one rank reports
    if not isinstance(e.value, UserError):
        assert e.value.code == 2
    assert took < 20
