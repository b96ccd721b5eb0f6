"""Host (NumPy) buffers during a GPU run, e.g. the evaluation sums: Comm must hand them to MPI
as they are, never to NCCL or the device-staging path (which read .data.ptr / .get()). The GPU
is stood in for by switching backend.name only: no device call may happen for these buffers."""
import numpy as np
import pytest
from mpi4py import MPI

from ddp_scratch import backend as B
from ddp_scratch.parallel.world import Comm


class NoDevice:
    """In place of NcclAllReduce: any use is a routing error."""
    def all_reduce_(self, buf, stream=None):
        raise AssertionError("a host buffer went to NCCL")

    broadcast_ = all_reduce_


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("nccl", [False, True])
def test_host_buffers_go_to_mpi_while_on_gpu(nccl, monkeypatch):
    comm = Comm(timeout_s=60)
    monkeypatch.setattr(B, "name", "cupy")          # B.on_gpu() is now true
    if nccl:
        comm.nccl = NoDevice()
    tot = np.array([1.0, 2.0, comm.rank + 1.0])
    comm.all_reduce_sum_(tot, "evaluation")
    b = np.full(4, float(comm.rank))
    comm.broadcast_(b, root=1)
    monkeypatch.setattr(B, "name", "numpy")
    assert tot.tolist() == [2.0, 4.0, 3.0]
    assert b.tolist() == [1.0] * 4
    MPI.COMM_WORLD.Barrier()
