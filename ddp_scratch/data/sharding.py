"""Per-rank sharding of global mini-batches.

Sharding works like a distributed sampler over GLOBAL batches: every epoch one permutation seeded
by (seed, epoch) is cut into global batches of `batch_size`, and rank r takes rows
[B·r/W, B·(r+1)/W) of each. So the union of the ranks' mini-batches at every step is exactly the
mini-batch one process would draw, shards are disjoint and cover the epoch, and every rank runs
the same number of steps (no rank ever waits alone in a collective).
"""
import math

import numpy as np


def epoch_order(n, batch, seed, epoch, tail="drop"):
    """(steps, batch) matrix of sample indices for one epoch, identical on every rank."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    if tail == "drop":
        steps = n // batch
        return perm[:steps * batch].reshape(steps, batch)
    steps = math.ceil(n / batch)
    pad = steps * batch - n     # wrap around to the start, like DistributedSampler's padding
    return np.concatenate([perm, np.resize(perm, pad)]).reshape(steps, batch)


def rank_bounds(batch, rank, world):
    """Rows of each global batch that belong to `rank` (sizes differ by at most one)."""
    return batch * rank // world, batch * (rank + 1) // world


def rank_shard(n, batch, seed, epoch, rank, world, tail="drop"):
    lo, hi = rank_bounds(batch, rank, world)
    return epoch_order(n, batch, seed, epoch, tail)[:, lo:hi].ravel()
