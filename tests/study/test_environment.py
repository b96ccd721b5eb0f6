"""study/environment.py: where a run ran, as JSON, with every probe allowed to fail."""
import datetime
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from ddp_scratch.study import environment
from ddp_scratch.study.environment import describe

REPO = Path(__file__).resolve().parents[2]
KEYS = {"hosts", "ranks", "cpu_model", "logical_cores", "cores_available", "gpus", "gpu_driver",
        "threads_per_rank", "mpi_library", "numpy", "blas", "python", "os", "date_utc", "git_commit",
        "git_dirty"}


def test_describe_this_machine_is_plain_json():
    env = describe()
    assert set(env) == KEYS
    assert json.loads(json.dumps(env, allow_nan=False)) == env
    assert env["hosts"] == [socket.gethostname()]
    assert env["logical_cores"] == os.cpu_count()
    if hasattr(os, "sched_getaffinity"):
        assert env["cores_available"] == len(os.sched_getaffinity(0))
    import numpy
    assert env["numpy"] == numpy.__version__
    assert env["python"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}.")
    when = datetime.datetime.strptime(env["date_utc"], "%Y-%m-%dT%H:%M:%SZ")
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    assert abs((now - when).total_seconds()) < 60
    assert env["ranks"] is None and env["mpi_library"] is None


def test_arguments_are_recorded_and_normalised(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    env = describe(threads=4, hosts=["node2", "node1", "node2"], ranks=3,
                   mpi_library="MPICH Version:      4.2.0\nMPICH Release date: x\n")
    assert env["threads_per_rank"] == 4                    # the argument wins over the variable
    assert env["hosts"] == ["node1", "node2"]              # distinct and sorted
    assert env["ranks"] == 3
    assert env["mpi_library"] == "MPICH Version: 4.2.0"    # first line, whitespace collapsed
    assert describe()["threads_per_rank"] == 7             # else OMP_NUM_THREADS
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert describe()["threads_per_rank"] is None


def test_git_commit_of_this_checkout():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("no git checkout here")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("git cannot read this checkout")
    env = describe()
    assert env["git_commit"] == head.stdout.strip()
    assert isinstance(env["git_dirty"], bool)


def test_git_commit_and_dirty_in_a_fresh_repository(tmp_path, monkeypatch):
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(git + ["init", "-q", str(tmp_path)], check=True)
    (tmp_path / "a.txt").write_text("one")
    subprocess.run(git + ["add", "a.txt"], cwd=tmp_path, check=True)
    subprocess.run(git + ["commit", "-q", "-m", "x"], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout
    monkeypatch.setattr(environment, "REPO_ROOT", tmp_path)
    assert (describe()["git_commit"], describe()["git_dirty"]) == (head.strip(), False)
    (tmp_path / "new.txt").write_text("untracked files are not changes")
    assert describe()["git_dirty"] is False
    (tmp_path / "a.txt").write_text("two")
    assert describe()["git_dirty"] is True


def test_no_git_checkout_no_git_binary_and_a_hanging_git(tmp_path, monkeypatch):
    monkeypatch.setattr(environment, "REPO_ROOT", tmp_path)          # not a checkout
    env = describe()
    assert env["git_commit"] is None and env["git_dirty"] is None
    (tmp_path / ".git").mkdir()                                     # looks like one, git disagrees
    assert describe()["git_commit"] is None
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))            # no git at all
    assert describe()["git_commit"] is None
    fake = tmp_path / "bin" / "git"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    monkeypatch.setattr(environment, "GIT_TIMEOUT_S", 0.3)
    t0 = time.perf_counter()
    assert describe()["git_commit"] is None
    assert time.perf_counter() - t0 < 5


def test_every_probe_may_fail_and_describe_still_answers(monkeypatch, tmp_path):
    def boom(*a, **k):
        raise OSError("probe failed")
    monkeypatch.setattr(environment, "CPUINFO", str(tmp_path / "no-proc" / "cpuinfo"))
    monkeypatch.setattr(environment.platform, "processor", lambda: "")
    monkeypatch.setattr(environment.socket, "gethostname", boom)
    monkeypatch.setattr(environment.os, "cpu_count", boom)
    monkeypatch.delattr(environment.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(environment.subprocess, "run", boom)
    monkeypatch.setattr(environment.platform, "python_version", boom)
    monkeypatch.setitem(sys.modules, "pynvml", None)                 # import pynvml -> ImportError
    monkeypatch.setitem(sys.modules, "numpy", None)
    env = describe(threads="many", ranks="x")
    assert set(env) == KEYS
    for k in ("hosts", "cpu_model", "logical_cores", "cores_available", "gpus", "gpu_driver", "numpy",
              "blas", "python", "git_commit", "git_dirty", "threads_per_rank", "ranks"):
        assert env[k] is None, k
    assert env["date_utc"] and json.dumps(env)


def test_cpu_model_from_proc_cpuinfo(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: X\nmodel name\t:  Intel(R) Xeon(R)  Gold 6248 CPU\n")
    monkeypatch.setattr(environment, "CPUINFO", str(info))
    assert describe()["cpu_model"] == "Intel(R) Xeon(R) Gold 6248 CPU"


def _fake_nvml(fail_init=False):
    calls = []
    m = types.ModuleType("pynvml")

    def init():
        if fail_init:
            raise RuntimeError("NVML Shared Library Not Found")
        calls.append("init")
    m.nvmlInit = init
    m.nvmlShutdown = lambda: calls.append("shutdown")
    m.nvmlSystemGetDriverVersion = lambda: b"550.54.15"               # older bindings return bytes
    m.nvmlDeviceGetCount = lambda: 2
    m.nvmlDeviceGetHandleByIndex = lambda i: i
    m.nvmlDeviceGetName = lambda h: "NVIDIA H100 80GB HBM3"
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=85899345920)
    return m, calls


def test_gpus_and_driver_through_nvml(monkeypatch):
    nvml, calls = _fake_nvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    env = describe()
    assert env["gpu_driver"] == "550.54.15"
    assert env["gpus"] == [{"name": "NVIDIA H100 80GB HBM3", "memory_bytes": 85899345920}] * 2
    assert calls == ["init", "shutdown"]
    json.dumps(env)
    nvml, calls = _fake_nvml(fail_init=True)                          # NVML present, no driver
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    assert (describe()["gpus"], describe()["gpu_driver"]) == (None, None)


def test_describe_imports_no_mpi_and_no_cupy():
    code = ("import sys, json; from ddp_scratch.study.environment import describe; json.dumps(describe());"
            "bad = [m for m in ('mpi4py', 'cupy', 'matplotlib', 'torch') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
