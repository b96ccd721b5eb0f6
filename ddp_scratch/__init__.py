"""ddp_scratch: neural networks written from scratch (NumPy / CuPy, every backward pass by hand),
trained data-parallel with MPI. Importing the package imports no numerical library, so the
launcher can set thread counts first.

The house has rooms; each holds one responsibility:

  backend.py config.py errors.py fsutil.py   what every room uses (numpy/cupy switch, typed config)
  nn/        the math: forward/backward pairs, the flat parameter space, layers, models, optimizers
  data/      datasets (digits, IDX, synthetic, text, addition), per-rank sharding, download
  parallel/  the only place that knows MPI and NCCL: the world and its watchdog, gradient reducers
  run/       the training loop, checkpoints, progress, sampling from a trained model
  study/     measuring and reporting: timers, energy, scaling metrics, report and plots, comm model
  cli/       the command line and everything that spawns processes or jobs (mpiexec, sweeps, SLURM)

Rules the rooms keep (tests/test_architecture.py reads every import, also inside functions):
  - nn/ imports nothing from data/, parallel/, run/, study/ or cli/: the math knows no MPI or files;
  - parallel/ imports no other room: communication sees flat buffers, never models or data;
  - data/ imports nothing from parallel/, run/, study/ or cli/;
  - study/ does not import run/ or cli/; run/ does not import cli/;
  - the top-level modules import no room, and nothing but launch.py and cli/ imports cli/;
  - no two modules import each other, directly or in a loop.
"""
__version__ = "0.1.0"
