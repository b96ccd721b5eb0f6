"""The command line and everything that spawns processes or jobs (mpiexec, sweeps, submitit)."""
