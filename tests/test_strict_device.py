"""The strict device pass: the nn unit and gradient checks (every op, layer and model against finite
differences and torch, the optimizers, plug-ins), training, 2-rank equivalence (host-staged MPI),
resume, reliability and the per-step host-read budget, run again with every process on the strict
CuPy stand-in (tests/strict_device: CuPy's refusals of host/device mixing, transfers counted). One
test here so that the one test command covers it; it runs its own pytest with DDP_TEST_DEVICE=strict.

tests/nn runs whole (about 60 s of CPU on the stand-in) but for the GPT tests on the 1000-step
addition run (experiments/gpt_addition.yaml trained to 90% exact match, minutes on two cores):
the NumPy pass runs them, and tests/run trains the GPT on the stand-in. Tests marked device_agnostic
(tests/conftest.py: messages, refusals, locks, files, decided on the host) skip here: their launches
would repeat array work the pass's training, resume and reliability tests already run."""
import os
import sys

import pytest

from conftest import ON_DEVICE, ROOT, run_group

PATHS = ["tests/device", "tests/nn", "tests/run", "tests/test_mpi.py"]
LONG = [f"tests/nn/test_gpt.py::{name}" for name in (
    "test_addition_reaches_90_percent_exact_match", "test_exact_match_is_greedy_decoding",
    "test_sampling_is_deterministic_with_a_seed", "test_bad_prompt_character_is_one_line_and_exit_2")]


@pytest.mark.skipif(ON_DEVICE, reason="already inside a device pass")
def test_the_suite_on_the_strict_cupy_stand_in():
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *PATHS,
           *[a for node in LONG for a in ("--deselect", node)]]
    env = dict(os.environ, DDP_TEST_DEVICE="strict", WANDB_MODE="disabled")
    r = run_group(cmd, timeout=1200, cwd=ROOT, env=env)
    print(r.stdout[-8000:], r.stderr[-3000:])
    assert r.returncode == 0, "the strict device pass failed: DDP_TEST_DEVICE=strict pytest " + " ".join(PATHS)
    assert " passed" in r.stdout and " failed" not in r.stdout
