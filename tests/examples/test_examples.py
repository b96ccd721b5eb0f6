"""The examples run as a student runs them, from the repository root: the worked example (a
user's layer and model, and the RAdam plug-in) trained on 2 ranks end to end and checked by
`launch.py gradcheck`, and a short LeNet-5 run on Fashion-MNIST (the full run, to ~90 % test
accuracy, is recorded in benchmarks/results/lenet_fashion_2ranks.json, not run here); and every
shipped config loads, its plug-ins imported and checked as a launcher checks them."""
import glob
import json
import os

import pytest

from conftest import ROOT, need_fashion, run_launch
from ddp_scratch.config import load_config
from ddp_scratch.nn.plugins import check_plugins

RESMLP = "examples/resmlp/resmlp_digits.yaml"
LENET = "examples/cnn/lenet_fashion.yaml"


def test_the_worked_example_trains_on_two_ranks_and_resumes(tmp_path):
    out = tmp_path / "resmlp"
    r = run_launch("local", "-n", "2", RESMLP, "--out", out, "--set", "train.max_steps=60",
                   "--set", "train.threads=1", timeout=120)
    print(r.stdout[-1500:], r.stderr[-1500:])
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "completed" and s["world_size"] == 2 and s["steps"] == 60
    assert s["config"]["model"]["options"] == {"width": 64, "hidden": 128, "blocks": 2}
    assert s["config"]["optim"]["options"] == {"betas": [0.9, 0.999], "eps": 1e-8, "decoupled_weight_decay": True}
    assert s["test_accuracy"] > 0.8, s["test_accuracy"]        # 10 epochs reach ~0.96
    r = run_launch("train", RESMLP, "--out", out, "--resume", "--set", "train.max_steps=70", "--quiet", timeout=60)
    assert r.returncode == 0 and json.loads((out / "summary.json").read_text())["steps"] == 70, r.stderr


def test_the_worked_example_passes_gradcheck():
    for target in ("examples/resmlp/resmlp.py:Residual", "examples/resmlp/resmlp.py:ResMLP"):
        r = run_launch("gradcheck", target, timeout=120)
        print(r.stdout)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.rstrip().splitlines()[-1].startswith("ok: every gradient within tolerance")


def test_lenet_on_fashion_mnist_two_ranks_short(tmp_path):
    need_fashion()
    out = tmp_path / "lenet"
    r = run_launch("local", "-n", "2", LENET, "--out", out, "--set", "train.max_steps=40",
                   "--set", "train.threads=1", timeout=180)
    print(r.stdout[-1500:], r.stderr[-1500:])
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "completed" and s["world_size"] == 2 and s["n_params"] == 61706
    assert s["test_accuracy"] > 0.5, s["test_accuracy"]       # 40 steps of 128: already well past chance
    assert s["flops_per_step"] > 0 and "lenet5 28x28x1" in r.stdout


CONFIGS = sorted(glob.glob(os.path.join(ROOT, "experiments", "*.yaml")) + glob.glob(os.path.join(ROOT, "examples", "*", "*.yaml")))


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.relpath(p, ROOT) for p in CONFIGS])
def test_every_shipped_config_loads_and_its_plugins_check(path, monkeypatch):
    monkeypatch.chdir(ROOT)                  # plug-in files are named relative to the repository root
    cfg = load_config(path, [])
    check_plugins(cfg)
    assert any(p.endswith("scaling_cnn_weak.yaml") for p in CONFIGS) and len(CONFIGS) >= 12
