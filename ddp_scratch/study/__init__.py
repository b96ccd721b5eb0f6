"""Measuring and reporting: step timers and scaling metrics, energy counters and estimates, the
all-reduce cost model and benchmark, and the scaling report with its plots."""
