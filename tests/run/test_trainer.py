"""End to end through launch.py: learning on the embedded digits, summary.json, checkpoint.npz."""
import json
import time

import numpy as np
import pytest

from conftest import BACKEND

SUMMARY_KEYS = {"world_size", "backend", "dtype", "model", "n_params", "steps", "epochs", "train_loss",
                "test_accuracy", "samples_per_s", "flops_per_s", "wall_s", "placement"}


def test_mlp_learns_embedded_digits_to_95_percent(tmp_path, launch):
    t0 = time.time()
    r = launch("train", "experiments/mlp_digits.yaml", "--out", tmp_path, ranks=2)
    took = time.time() - t0
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "summary.json").read_text())
    print(f"2 ranks, embedded digits: test accuracy {s['test_accuracy']:.4f} in {took:.1f}s wall "
          f"({s['wall_s']:.2f}s training)")
    assert SUMMARY_KEYS <= set(s)
    assert s["world_size"] == 2 and s["backend"] == BACKEND and s["model"] == "mlp"
    # where each rank ran: one host, local ranks 0 and 1 (two nodes: tests/slurm/test_two_nodes.py)
    assert [(p["rank"], p["local_rank"], p["local_size"]) for p in s["placement"]] == [(0, 0, 2), (1, 1, 2)]
    assert len({p["host"] for p in s["placement"]}) == 1
    assert s["test_accuracy"] >= 0.95
    assert s["n_params"] == 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    # the analytic memory of every model, as the README says (float32 parameters)
    assert s["memory_params_bytes"] == 4 * s["n_params"] and s["memory_total_bytes"] > s["memory_params_bytes"]
    assert "test_accuracy" in r.stdout and "epoch" in r.stderr
    z = np.load(tmp_path / "checkpoint.npz", allow_pickle=False)
    assert z["params"].shape == (s["n_params"],)


def test_checkpoint_params_same_order_every_run_and_world(tmp_path, launch):
    outs = []
    for i, ranks in enumerate((0, 2)):
        out = tmp_path / f"r{i}"
        r = launch("train", "experiments/mlp_digits.yaml", "--out", out, "--set", "train.max_steps=5",
                   "--set", "train.dtype=float64", "--quiet", ranks=ranks)
        assert r.returncode == 0, r.stderr
        outs.append(np.load(out / "checkpoint.npz", allow_pickle=False)["params"])
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-10)


def test_world_of_one_needs_no_mpiexec_and_set_overrides(tmp_path, launch):
    r = launch("train", "experiments/mlp_digits.yaml", "--out", tmp_path, "--set", "train.max_steps=3",
               "--set", "optim.name=rmsprop", "--set", "optim.lr=0.001", "--set", "model.hidden=[16]",
               "--set", "model.activation=gelu", "--quiet")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["world_size"] == 1 and s["steps"] == 3
    assert s["config"]["optim"]["name"] == "rmsprop" and s["config"]["model"]["hidden"] == [16]


def test_existing_checkpoint_is_not_overwritten_without_consent(tmp_path, launch):
    args = ("train", "experiments/mlp_digits.yaml", "--out", tmp_path, "--set", "train.max_steps=2", "--quiet")
    assert launch(*args).returncode == 0
    before = (tmp_path / "checkpoint.npz").read_bytes()
    r = launch(*args)
    assert r.returncode == 2 and "--resume" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (tmp_path / "checkpoint.npz").read_bytes() == before
    assert launch(*args, "--overwrite").returncode == 0


@pytest.mark.device_agnostic("the IDX files are read on the host into the arrays the digits use (a classifier "
                              "trained on a device: test_mlp_learns_embedded_digits_to_95_percent)")
def test_mnist_format_training_on_real_fashion_files(tmp_path, launch):
    from conftest import need_fashion
    r = launch("train", "experiments/mlp_mnist.yaml", "--out", tmp_path, "--set", f"data.path={need_fashion()}",
               "--set", "train.max_steps=60", "--set", "model.hidden=[64]", "--quiet", ranks=2)
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "summary.json").read_text())
    print(f"fashion-mnist, 60 steps: test accuracy {s['test_accuracy']:.3f}")
    assert s["test_accuracy"] > 0.6      # chance is 0.1


@pytest.mark.parametrize("extra", [["--set", "logging.wandb=true"]])
def test_wandb_offline_logging_from_rank_0(tmp_path, launch, extra):
    pytest.importorskip("wandb")
    r = launch("train", "experiments/mlp_digits.yaml", "--out", tmp_path, "--set", "train.max_steps=20",
               "--quiet", *extra, env={"WANDB_MODE": "offline"}, ranks=2)
    assert r.returncode == 0, r.stderr
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "exactly one (rank 0) offline run"


@pytest.mark.host_arrays("counts NumPy's host allocations (a device step's temporaries come from CuPy's pool)")
def test_trainer_step_allocates_no_arrays(tmp_path):
    """Trainer.train_step as the loop runs it (batch gather into its buffers, forward, backward,
    gradient statistics, clipping, optimizer): no temporary as large as one batch of inputs
    (256 x 784 float32 = 784 KiB) or one activation, nothing left behind."""
    from conftest import step_memory
    from ddp_scratch.parallel.world import Comm
    from ddp_scratch.config import load_config
    from ddp_scratch.run.trainer import Options, Trainer
    cfg = load_config(None, ["data.name=synthetic", "data.n_samples=2048", "model.hidden=[1024,1024]",
                             "train.batch_size=256", "train.grad_clip=1.0", "optim.name=adamw",
                             "logging.progress=false"])
    tr = Trainer(cfg, Options(out=str(tmp_path), quiet=True), comm=Comm(serial=True))
    i = [0]

    def step():
        tr.train_step(0, i[0] % 4)
        i[0] += 1
    live, peak = step_memory(step)
    print(f"Trainer.train_step: temporaries peak {peak / 1024:.1f} KiB, live {live} B")
    assert live < 4096 and peak < 256 * 1024
