"""Stand-in for `launch.py train` with its SLURM contract, for the sbatch template tests.

    python stub_launch.py train CONFIG --out DIR [--resume] [--set K=V ...] [--steps N]

Every rank takes a step every 0.05 s. On SIGUSR1/SIGUSR2/SIGTERM the ranks agree on a step
(allreduce of a stop flag), rank 0 writes DIR/ckpt.json, and every rank exits 75, as
launch.py train does. --resume continues from DIR/ckpt.json. At the end rank 0 writes
{"done": true} into it and the ranks exit 0.
"""
import argparse
import json
import os
import signal
import sys
import time

from mpi4py import MPI

EXIT_PREEMPTED = 75


def main():
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["train"])
    p.add_argument("config")
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--steps", type=int, default=100)
    a = p.parse_args()
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    stop = []
    for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM):
        signal.signal(s, lambda num, frame: stop.append(num))
    ck = os.path.join(a.out, "ckpt.json")
    step = 0
    if a.resume and os.path.exists(ck):
        with open(ck) as f:
            step = json.load(f)["step"]
    restart = os.environ.get("SLURM_RESTART_COUNT", "0")
    print(f"rank {rank}/{size} start step {step} restart {restart} set={a.set}", flush=True)

    def save(**extra):
        if rank == 0:
            with open(ck + ".tmp", "w") as f:
                json.dump({"step": step, "world": size, "set": a.set, **extra}, f)
            os.replace(ck + ".tmp", ck)
        comm.Barrier()

    while step < a.steps:
        time.sleep(0.05)
        step += 1
        if comm.allreduce(1 if stop else 0, op=MPI.MAX):
            save()
            print(f"rank {rank} checkpointed at step {step}", flush=True)
            sys.exit(EXIT_PREEMPTED)
    save(done=True)
    print(f"rank {rank} finished at step {step}", flush=True)


if __name__ == "__main__":
    main()
