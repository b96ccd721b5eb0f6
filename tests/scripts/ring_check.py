"""Under mpiexec -n N: the ring all-reduce against MPI_Allreduce on small buffers of every kind of
length (empty chunks, uneven chunks), float32/float64, plain and bf16 with an exact tail. Prints one
line per failure and exits 1 if any; kept free of pytest so 8 oversubscribed ranks start quickly."""
import os
import sys

import numpy as np
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from ddp_scratch.parallel.ring import RingAllReduce  # noqa: E402
from ddp_scratch.parallel.world import Comm  # noqa: E402

world = MPI.COMM_WORLD
comm = Comm(timeout_s=60)
N, r = comm.size, comm.rank
bad = []
for n in (1, N - 1, N, N + 1, 7, 1000, 4099):
    for dtype, compress, tail, rtol in (("float64", "none", 0, 1e-13), ("float32", "none", 0, 1e-5),
                                        ("float32", "bf16", 2, 2 ** -6 * N)):
        if n <= tail:
            continue
        x = np.random.default_rng(r * 7919 + n).standard_normal(n).astype(dtype)
        if tail:
            x[-tail:] = [70000 + r, 1]          # counts bf16 would round (8 bits of mantissa)
        ref = x.astype(np.float64)
        world.Allreduce(MPI.IN_PLACE, ref, op=MPI.SUM)
        RingAllReduce(comm, n, dtype, compress, False, tail).all_reduce_(x)
        scale = np.abs(ref).max()
        if not np.allclose(x, ref, rtol=rtol, atol=rtol * scale):
            bad.append(f"n={n} {dtype} {compress}: max error {np.abs(x - ref).max() / scale:.1e} of the largest sum")
        if tail and not np.array_equal(x[-tail:], ref[-tail:]):
            bad.append(f"n={n} {compress}: the exact tail is {x[-tail:]}, expected {ref[-tail:]}")
        if not all(np.array_equal(x, y) for y in world.allgather(x)):
            bad.append(f"n={n} {dtype} {compress}: ranks disagree")
for line in bad:
    print(f"rank {r} of {N}: {line}", flush=True)
if r == 0 and not bad:
    print(f"ring all-reduce equals MPI_Allreduce on {N} ranks", flush=True)
sys.exit(1 if world.allreduce(len(bad)) else 0)
