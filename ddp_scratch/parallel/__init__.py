"""The only room that knows MPI (world.py) and NCCL (nccl.py): ranks, collectives on flat
buffers, the watchdog and heartbeats, bucketed overlapped reducers (reduce.py), ZeRO-1's
reduce-scatter and all-gather (zero.py), the trace's clock offsets (timeline.py)."""
