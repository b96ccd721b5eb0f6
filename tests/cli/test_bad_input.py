"""One table of bad inputs: each gives one line on stderr naming what is wrong and what was
expected, exit status 2, no traceback, no hang (every case under a timeout), on one rank and on
two — and the good checkpoint and summary already in the output folder stay untouched."""
import gzip
import io
import json
import os
import zipfile

import numpy as np
import pytest

from conftest import make_mnist_dir, write_idx

DIGITS = "experiments/mlp_digits.yaml"
GPT = "experiments/gpt_char.yaml"


def _file(tmp, data):
    p = tmp / "text.txt"
    p.write_bytes(data)
    return p


def _gpt_ckpt(tmp):
    """A tiny trained addition GPT (2 steps) to sample from."""
    from conftest import run_launch
    out = tmp / "gpt"
    r = run_launch("train", "experiments/gpt_addition.yaml", "--out", out, "--quiet", "--set", "train.max_steps=2",
                   "--set", "model.n_layer=1", "--set", "model.d_model=16", "--set", "model.n_head=2")
    assert r.returncode == 0, r.stderr
    return str(out / "checkpoint.npz")
MNIST = "experiments/mlp_mnist.yaml"


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A finished run whose checkpoint/summary every bad case below must leave intact."""
    from conftest import run_launch
    out = tmp_path_factory.mktemp("good")
    r = run_launch("train", DIGITS, "--out", out, "--set", "train.max_steps=3", "--quiet")
    assert r.returncode == 0, r.stderr
    return out


def _cfg(tmp, text):
    p = tmp / "c.yaml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(p)


def _mnist(tmp, mutate):
    d = tmp / "mnist"
    d.mkdir()
    make_mnist_dir(d)
    mutate(d)
    return ["--set", f"data.path={d}"]


def _ckpt(tmp, good, kind):
    """Copy the good output folder, then damage its checkpoint."""
    import shutil
    out = tmp / "resume"
    shutil.copytree(good, out)
    p = out / "checkpoint.npz"
    if kind == "truncated":
        p.write_bytes(p.read_bytes()[:200])
    elif kind == "pickle":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            arr = io.BytesIO()
            np.save(arr, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
            z.writestr("params.npy", arr.getvalue())
        p.write_bytes(buf.getvalue())
    elif kind == "foreign":
        np.savez(p, params=np.zeros(3))
    elif kind == "text":
        p.write_text("not a checkpoint")
    return out


# (id, args builder(tmp, good) -> argv after "launch.py", expected fragment of the one line,
#  ranks: 0 = one process, 2 = one process and mpiexec -n 2, -2 = mpiexec -n 2 only)
CASES = [
    # --- config
    ("unknown-key", lambda t, g: ["train", DIGITS, "--set", "model.hiden=[4]"], "did you mean 'hidden'", 0),
    ("unknown-section", lambda t, g: ["train", DIGITS, "--set", "modle.hidden=[4]"], "did you mean 'model'", 0),
    ("wrong-type", lambda t, g: ["train", DIGITS, "--set", "train.batch_size=abc"], "train.batch_size: expected an integer", 2),
    ("negative-size", lambda t, g: ["train", DIGITS, "--set", "train.batch_size=-4"], "expected a value > 0", 0),
    ("zero-hidden", lambda t, g: ["train", DIGITS, "--set", "model.hidden=[0]"], "model.hidden[0]: expected a value >= 1", 0),
    ("nothing-to-do", lambda t, g: ["train", DIGITS, "--set", "train.epochs=0"], "train.epochs", 0),
    ("batch-below-world", lambda t, g: ["train", DIGITS, "--set", "train.batch_size=1"], "at least the number of ranks (2)", -2),
    ("unknown-optimizer", lambda t, g: ["train", DIGITS, "--set", "optim.name=adamax"], "optim.name: expected one of", 2),
    ("unknown-activation", lambda t, g: ["train", DIGITS, "--set", "model.activation=swish"], "model.activation: expected one of", 0),
    ("unknown-dataset", lambda t, g: ["train", DIGITS, "--set", "data.name=cifar"], "data.name: expected one of", 0),
    ("lr-not-a-number", lambda t, g: ["train", DIGITS, "--set", "optim.lr=fast"], "optim.lr: expected a number", 0),
    ("lr-nan", lambda t, g: ["train", DIGITS, "--set", "optim.lr=.nan"], "optim.lr: expected a finite number", 0),
    ("list-item-type", lambda t, g: ["train", DIGITS, "--set", "model.hidden=[64,abc]"], "model.hidden[1]: expected an integer", 0),
    ("bool-type", lambda t, g: ["train", DIGITS, "--set", "optim.nesterov=maybe"], "optim.nesterov: expected true or false", 0),
    ("missing-config", lambda t, g: ["train", str(t / "nope.yaml")], "nope.yaml does not exist", 2),
    ("config-not-yaml", lambda t, g: ["train", _cfg(t, "model: [unclosed\n  x: 1")], "not valid YAML", 0),
    ("config-binary", lambda t, g: ["train", _cfg(t, b"\x00\xff\xfe\x89PNG")], "config file", 0),
    ("config-list", lambda t, g: ["train", _cfg(t, "- a\n- b\n")], "expected a mapping", 0),
    ("nccl-on-cpu", lambda t, g: ["train", DIGITS, "--set", "comm.backend=nccl"], "comm.backend: 'nccl' sums GPU buffers and needs backend: cupy", 0),
    ("cupy-without-gpu", lambda t, g: ["train", DIGITS, "--set", "backend=cupy", "--set", "comm.backend=nccl"], "backend: 'cupy'", 2),
    ("batch-too-big", lambda t, g: ["train", DIGITS, "--set", "train.batch_size=100000"], "larger than the training split", 0),
    # --- CLI
    ("unknown-subcommand", lambda t, g: ["trian", DIGITS], "invalid choice", 0),
    ("bad-set-syntax", lambda t, g: ["train", DIGITS, "--set", "train.batch_size"], "expected key=value", 0),
    ("missing-config-arg", lambda t, g: ["train"], "required: config", 0),
    ("bad-int-flag", lambda t, g: ["train", DIGITS, "--stop-at-step", "soon"], "invalid int value", 0),
    # --- data
    ("mnist-missing-folder", lambda t, g: ["train", MNIST, "--set", f"data.path={t / 'none'}"], "none does not exist", 2),
    ("mnist-missing-file", lambda t, g: ["train", MNIST, *_mnist(t, lambda d: os.remove(d / "t10k-labels-idx1-ubyte"))], "missing t10k-labels-idx1-ubyte", 0),
    ("mnist-empty-file", lambda t, g: ["train", MNIST, *_mnist(t, lambda d: (d / "train-images-idx3-ubyte").write_bytes(b""))], "bad IDX magic", 0),
    ("mnist-truncated", lambda t, g: ["train", MNIST, *_mnist(t, lambda d: write_idx(d / "train-images-idx3-ubyte", np.zeros((20, 28, 28)), cut=100))], "truncated", 2),
    ("mnist-wrong-magic", lambda t, g: ["train", MNIST, *_mnist(t, lambda d: (d / "train-labels-idx1-ubyte").write_bytes(b"\x08\x01\x00\x00" + bytes(24)))], "bad IDX magic", 0),
    ("mnist-count-mismatch", lambda t, g: ["train", MNIST, *_mnist(t, lambda d: write_idx(d / "t10k-labels-idx1-ubyte", np.zeros(9)))], "10 images but 9 labels", 2),
    ("mnist-corrupt-gzip", lambda t, g: ["train", MNIST, *_mnist(t, lambda d: (os.remove(d / "train-images-idx3-ubyte"), (d / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(600))[:-9])))], "gzip", 0),
    ("mnist-images-not-3d", lambda t, g: ["train", MNIST, *_mnist(t, lambda d: write_idx(d / "train-images-idx3-ubyte", np.zeros((20, 784))))], "expected 3 dimensions", 0),
    # --- text data (GPT)
    ("text-empty", lambda t, g: ["train", GPT, "--set", f"data.path={_file(t, b'')}"], "training split has 0 tokens", 2),
    ("text-binary", lambda t, g: ["train", GPT, "--set", f"data.path={_file(t, bytes(range(256)) * 8)}"], "not UTF-8 text", 0),
    ("text-missing", lambda t, g: ["train", GPT, "--set", f"data.path={t / 'no.txt'}"], "no.txt", 0),
    ("gpt-heads", lambda t, g: ["train", GPT, "--set", "model.n_head=3"], "model.d_model: expected a multiple of model.n_head (3)", 0),
    ("sample-bad-prompt", lambda t, g: ["sample", _gpt_ckpt(t), "--prompt", "héllo€", "--tokens", "5"], "not in the vocabulary", 0),
    ("sample-mlp-checkpoint", lambda t, g: ["sample", str(g / "checkpoint.npz"), "--prompt", "1+1=", "--tokens", "5"], "sampling needs a gpt", 0),
    # --- checkpoints (--resume into a copy of the good folder)
    ("ckpt-truncated", lambda t, g: ["train", DIGITS, "--out", _ckpt(t, g, "truncated"), "--resume"], "truncated or corrupt", 2),
    ("ckpt-pickle", lambda t, g: ["train", DIGITS, "--out", _ckpt(t, g, "pickle"), "--resume"], "pickled", 0),
    ("ckpt-foreign", lambda t, g: ["train", DIGITS, "--out", _ckpt(t, g, "foreign"), "--resume"], "not written by ddp_scratch", 0),
    ("ckpt-not-npz", lambda t, g: ["train", DIGITS, "--out", _ckpt(t, g, "text"), "--resume"], "checkpoint", 0),
    ("ckpt-other-model", lambda t, g: ["train", DIGITS, "--out", g, "--resume", "--set", "model.hidden=[32]"], "model.hidden is [128, 64] in the checkpoint but [32] now", 2),
    ("ckpt-other-optim", lambda t, g: ["train", DIGITS, "--out", g, "--resume", "--set", "optim.name=adam"], "optim.name is 'sgd' in the checkpoint but 'adam' now", 0),
    ("ckpt-other-data", lambda t, g: ["train", DIGITS, "--out", g, "--resume", "--set", "data.seed=5"], "data.seed", 0),
    ("download-unknown", lambda t, g: ["download", "cifar", "--to", str(t / "d")], "unknown dataset 'cifar'", 0),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, tmp_path, good, launch):
    name, build, fragment, ranks = case
    before = {f: (good / f).read_bytes() for f in ("checkpoint.npz", "summary.json")}
    argv = build(tmp_path, good)
    if "--out" not in argv and argv[0] == "train":
        argv += ["--out", str(tmp_path / "out")]
    for n in ([2] if ranks == -2 else sorted({0, ranks})):
        r = launch(*argv, timeout=60, ranks=n)
        err = r.stderr.strip()
        print(f"{name} ({n or 1} rank): exit {r.returncode}: {err}")
        assert r.returncode == 2, err
        assert "Traceback" not in r.stderr
        assert len(err.splitlines()) == 1, f"expected one line, got: {err!r}"
        assert err.startswith("error:") and fragment in err
    for f, data in before.items():
        assert (good / f).read_bytes() == data, f"{f} of a good run was changed"
    assert json.loads(before["summary.json"])["status"] == "completed"


def test_table_is_large_enough():
    assert len(CASES) >= 25
