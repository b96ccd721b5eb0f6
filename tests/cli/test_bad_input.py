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
LENET = "examples/cnn/lenet_fashion.yaml"
LENET_SYNTH = ["train", LENET, "--set", "data.name=synthetic", "--set", "data.n_features=784"]   # no Fashion-MNIST needed


def _file(tmp, data):
    p = tmp / "text.txt"
    p.write_bytes(data)
    return p


def _plugin(tmp, text, helper=None):
    """A plug-in file (and a helper it imports), named through a folder and back
    (sub/../bad_plugin.py): an error names the plug-in as given and the helper by its absolute
    path, not a path relative to the current directory."""
    (tmp / "sub").mkdir(exist_ok=True)
    (tmp / "bad_plugin.py").write_text(text)
    if helper is not None:
        (tmp / "bad_helper.py").write_text(helper)
    return f"model.name={tmp}/sub/../bad_plugin.py:Net"


def _gpt_ckpt(tmp):
    """A tiny trained addition GPT (2 steps) to sample from."""
    from conftest import run_launch
    out = tmp / "gpt"
    r = run_launch("train", "experiments/gpt_addition.yaml", "--out", out, "--quiet", "--set", "train.max_steps=2",
                   "--set", "model.n_layer=1", "--set", "model.d_model=16", "--set", "model.n_head=2")
    assert r.returncode == 0, r.stderr
    return str(out / "checkpoint.npz")
MNIST = "experiments/mlp_mnist.yaml"


def _gpt_vocab(tmp, vocab):
    """A trained GPT checkpoint whose stored vocabulary was replaced by `vocab`."""
    from ddp_scratch.run import checkpoint as ckpt
    path = _gpt_ckpt(tmp)
    arrays, meta = ckpt.load(path)
    meta["vocab"] = vocab
    ckpt.save(path, arrays, {k: v for k, v in meta.items() if k not in ("format", "version")})
    return path


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


def _cut_gzip(p):
    z = gzip.compress(p.read_bytes())
    os.remove(p)
    p.with_suffix(".gz").write_bytes(z[:len(z) // 2] + b"\xff\xff\xff\xff")


def _fifo(tmp, name="fifo"):
    p = tmp / name
    os.mkfifo(p)
    return str(p)


def _ckpt_meta(tmp, good, edit, arrays_edit=None):
    """Copy the good output folder, then rewrite its checkpoint with edited metadata/arrays."""
    import shutil
    from ddp_scratch.run import checkpoint as ckpt
    out = tmp / "resume"
    shutil.copytree(good, out)
    arrays, meta = ckpt.load(str(out / "checkpoint.npz"))
    edit(meta)
    if arrays_edit:
        arrays_edit(arrays)
    for k in ("format", "version"):
        meta.pop(k, None)
    ckpt.save(str(out / "checkpoint.npz"), arrays, meta)
    return out


def _mnist_labels(d, values, magic=0x08):
    write_idx(d / "train-labels-idx1-ubyte", np.asarray(values) % 256, magic_type=magic)


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
    elif kind == "random":
        p.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "dir":
        p.unlink()
        p.mkdir()
    elif kind == "fifo":
        p.unlink()
        os.mkfifo(p)
    return out


def _file_in_the_way(tmp):
    p = tmp / "afile"
    p.write_text("x")
    return str(p)


def _old_sweep(tmp):
    """A sweep folder that holds an earlier weak sweep of the digits MLP."""
    import json
    d = tmp / "old"
    (d / "runs").mkdir(parents=True)
    (d / "sweep.json").write_text(json.dumps({"config": "mlp_digits", "mode": "weak", "batch": 64, "overrides": [],
                                              "steps": 20, "warmup": 5}))
    (d / "runs" / "mlp_digits-weak-n1-r0.json").write_text("{}")
    return str(d)


def _sweep_out(tmp):
    p = tmp / "sweepfile"
    p.write_text("x")
    return str(p)


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
    ("config-empty", lambda t, g: ["train", _cfg(t, "")], "is empty (only comments or nothing): expected a mapping of sections", 0),
    ("config-only-comments", lambda t, g: ["train", _cfg(t, "# model: mlp\n\n")], "is empty (only comments or nothing)", 0),
    ("nccl-on-cpu", lambda t, g: ["train", DIGITS, "--set", "comm.backend=nccl"], "comm.backend: 'nccl' sums GPU buffers and needs backend: cupy", 0),
    ("kernels-unknown", lambda t, g: ["train", DIGITS, "--set", "kernels=fast"], "kernels: expected one of auto, numba, numpy, got 'fast'", 0),
    ("numba-on-gpu", lambda t, g: ["train", DIGITS, "--set", "backend=cupy", "--set", "kernels=numba"], "kernels: 'numba' compiles CPU kernels and backend: cupy runs on the GPU", 0),
    ("cupy-without-gpu", lambda t, g: ["train", DIGITS, "--set", "backend=cupy", "--set", "comm.backend=nccl"], "backend: 'cupy'", 2),
    ("batch-too-big", lambda t, g: ["train", DIGITS, "--set", "train.batch_size=100000"], "larger than the training split", 0),
    ("comm-algorithm-unknown", lambda t, g: ["train", DIGITS, "--set", "comm.algorithm=rign"], "comm.algorithm: expected one of mpi, ring, got 'rign' (did you mean 'ring'?)", 0),
    ("ring-overlap", lambda t, g: ["train", DIGITS, "--set", "comm.algorithm=ring", "--set", "comm.overlap=true"], "comm.overlap: the ring all-reduce (comm.algorithm: ring) is blocking", 2),
    ("ring-nccl", lambda t, g: ["train", DIGITS, "--set", "backend=cupy", "--set", "comm.backend=nccl", "--set", "comm.algorithm=ring"], "comm.algorithm: 'ring' is the hand-written ring over MPI", 0),
    ("compress-unknown", lambda t, g: ["train", DIGITS, "--set", "comm.algorithm=ring", "--set", "comm.compress=fp8"], "comm.compress: expected one of none, fp16, bf16, got 'fp8'", 0),
    ("compress-without-ring", lambda t, g: ["train", DIGITS, "--set", "comm.compress=bf16"], "comm.compress: 'bf16' gradients are summed in float32 inside the hand-written ring; needs comm.algorithm=ring", 2),
    ("error-feedback-type", lambda t, g: ["train", DIGITS, "--set", "comm.error_feedback=maybe"], "comm.error_feedback: expected true or false", 0),
    ("error-feedback-without-compress", lambda t, g: ["train", DIGITS, "--set", "comm.algorithm=ring", "--set", "comm.error_feedback=true"], "comm.error_feedback: feeds back what 16-bit rounding lost; needs comm.compress", 0),
    # --- CLI
    ("unknown-subcommand", lambda t, g: ["trian", DIGITS], "invalid choice", 0),
    ("bad-set-syntax", lambda t, g: ["train", DIGITS, "--set", "train.batch_size"], "expected key=value", 0),
    ("missing-config-arg", lambda t, g: ["train"], "required: config", 0),
    ("bad-int-flag", lambda t, g: ["train", DIGITS, "--stop-at-step", "soon"], "expected a step (an integer >= 1), got 'soon'", 0),
    # --- data
    ("mnist-missing-folder", lambda t, g: ["train", MNIST, "--set", f"data.path={t / 'none'}"], "none does not exist", 2),
    ("mnist-missing-file", lambda t, g: ["train", MNIST, *_mnist(t, lambda d: os.remove(d / "t10k-labels-idx1-ubyte"))], "missing t10k-labels-idx1-ubyte", 0),
    ("mnist-empty-file", lambda t, g: ["train", MNIST, *_mnist(t, lambda d: (d / "train-images-idx3-ubyte").write_bytes(b""))], "train-images-idx3-ubyte is empty", 0),
    ("mnist-truncated", lambda t, g: ["train", MNIST, *_mnist(t, lambda d: write_idx(d / "train-images-idx3-ubyte", np.zeros((20, 28, 28)), cut=100))], "truncated", 2),
    ("mnist-wrong-magic", lambda t, g: ["train", MNIST, *_mnist(t, lambda d: (d / "train-labels-idx1-ubyte").write_bytes(b"\x08\x01\x00\x00" + bytes(24)))], "bad IDX magic", 0),
    ("mnist-count-mismatch", lambda t, g: ["train", MNIST, *_mnist(t, lambda d: write_idx(d / "t10k-labels-idx1-ubyte", np.zeros(9)))], "10 images but 9 labels", 2),
    ("mnist-corrupt-gzip", lambda t, g: ["train", MNIST, *_mnist(t, lambda d: (os.remove(d / "train-images-idx3-ubyte"), (d / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(600))[:-9])))], "gzip", 0),
    # a half-finished download: gzip's size trailer is then whatever bytes the cut left (here 4 GiB)
    ("mnist-cut-gzip-not-a-memory-error", lambda t, g: ["train", MNIST, *_mnist(t, lambda d: _cut_gzip(d / "train-images-idx3-ubyte"))], "gzip stream", 0),
    ("mnist-images-not-3d", lambda t, g: ["train", MNIST, *_mnist(t, lambda d: write_idx(d / "train-images-idx3-ubyte", np.zeros((20, 784))))], "expected 3 dimensions", 0),
    # --- text data (GPT)
    ("text-empty", lambda t, g: ["train", GPT, "--set", f"data.path={_file(t, b'')}"], "0 characters, fewer than model.block_size + 2", 2),
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
    # --- config, more of each class
    ("config-folder", lambda t, g: ["train", str(t)], "is a folder, expected a file", 0),
    ("config-fifo", lambda t, g: ["train", _fifo(t)], "not a regular file", 0),
    ("config-device", lambda t, g: ["train", "/dev/zero"], "not a regular file", 0),
    ("config-duplicate-key", lambda t, g: ["train", _cfg(t, "optim:\n  lr: 0.1\n  lr: 0.2\n")], "line 3: key 'lr' appears twice", 0),
    ("config-multi-doc", lambda t, g: ["train", _cfg(t, "a: 1\n---\nb: 2\n")], "not valid YAML", 0),
    ("lr-garbled-sci", lambda t, g: ["train", DIGITS, "--set", "optim.lr=1e-3x"], "optim.lr: expected a number, got '1e-3x'", 0),
    ("batch-not-whole", lambda t, g: ["train", DIGITS, "--set", "train.batch_size=64.5"], "not a whole number", 0),
    ("int-too-large", lambda t, g: ["train", DIGITS, "--set", "train.max_steps=1e30"], "too large", 0),
    ("fraction-one", lambda t, g: ["train", DIGITS, "--set", "data.val_fraction=1"], "data.val_fraction: expected a value < 1.0", 0),
    ("fractions-sum", lambda t, g: ["train", DIGITS, "--set", "data.val_fraction=0.5", "--set", "data.test_fraction=0.5"], "expected less than 1", 0),
    ("dropout-one", lambda t, g: ["train", GPT, "--set", "model.dropout=1.0"], "model.dropout: expected a value < 1.0", 0),
    ("seed-negative", lambda t, g: ["train", DIGITS, "--set", "train.seed=-3"], "train.seed: expected a value >= 0", 0),
    ("set-into-value", lambda t, g: ["train", DIGITS, "--set", "optim.lr.x=1"], "optim.lr is a value, not a section", 0),
    ("set-empty-key", lambda t, g: ["train", DIGITS, "--set", "=1"], "expected key=value", 0),
    ("digits-too-many", lambda t, g: ["train", "experiments/gpt_addition.yaml", "--set", "data.digits=10"], "data.digits: expected a value <= 9", 0),
    ("model-too-big", lambda t, g: ["train", DIGITS, "--set", "model.hidden=[1000000,1000000]"], "model mlp needs about", 2),
    ("gpt-too-big", lambda t, g: ["train", GPT, "--set", "model.d_model=65536", "--set", "model.n_layer=64"], "model gpt needs about", 0),
    ("data-too-big", lambda t, g: ["train", DIGITS, "--set", "data.name=synthetic", "--set", "data.n_samples=1000000000", "--set", "data.n_features=100000"], "the synthetic data needs about", 0),
    # --- CLI flags and the output folder
    ("stop-at-negative", lambda t, g: ["train", DIGITS, "--stop-at-step", "-3"], "argument --stop-at-step: expected a step (an integer >= 1), got '-3'", 0),
    ("stop-at-zero", lambda t, g: ["train", DIGITS, "--stop-at-step", "0"], "argument --stop-at-step: expected a step (an integer >= 1), got '0'", 0),
    ("local-stop-at-zero", lambda t, g: ["local", "-n", "2", DIGITS, "--stop-at-step", "0"], "launch.py local: argument --stop-at-step: expected a step (an integer >= 1)", 0),
    ("submit-stop-at-zero", lambda t, g: ["submit", DIGITS, "--local", "--stop-at-step", "0e0"], "launch.py submit: argument --stop-at-step: expected a step (an integer >= 1), got '0e0'", 0),
    ("resume-and-overwrite", lambda t, g: ["train", DIGITS, "--resume", "--overwrite"], "give one", 0),
    ("out-is-a-file", lambda t, g: ["train", DIGITS, "--out", _file_in_the_way(t)], "is a file, expected a folder", 2),
    ("out-under-a-file", lambda t, g: ["train", DIGITS, "--out", _file_in_the_way(t) + "/run"], "so no folder can be made under it", 0),
    ("out-empty", lambda t, g: ["train", DIGITS, "--out", " "], "argument --out: expected an output folder, got an empty string", 0),
    ("out-exists-no-resume", lambda t, g: ["train", DIGITS, "--out", str(g)], "already exists: pass --resume", 2),
    # --- checkpoints, every wrong form
    ("ckpt-random-bytes", lambda t, g: ["train", DIGITS, "--out", _ckpt(t, g, "random"), "--resume"], "is not an .npz file (starts with bytes", 0),
    ("ckpt-empty", lambda t, g: ["train", DIGITS, "--out", _ckpt(t, g, "empty"), "--resume"], "is not an .npz file (empty", 0),
    ("ckpt-folder", lambda t, g: ["train", DIGITS, "--out", _ckpt(t, g, "dir"), "--resume"], "checkpoint.npz there is a folder; a run writes a file", 0),
    ("ckpt-fifo", lambda t, g: ["train", DIGITS, "--out", _ckpt(t, g, "fifo"), "--resume"], "not a regular file", 2),
    ("ckpt-no-step", lambda t, g: ["train", DIGITS, "--out", _ckpt_meta(t, g, lambda m: m.pop("step")), "--resume"], "metadata lacks 'step'", 2),
    ("ckpt-step-text", lambda t, g: ["train", DIGITS, "--out", _ckpt_meta(t, g, lambda m: m.update(step="7")), "--resume"], "metadata 'step' is str", 0),
    ("ckpt-step-negative", lambda t, g: ["train", DIGITS, "--out", _ckpt_meta(t, g, lambda m: m.update(step=-2)), "--resume"], "expected >= 0", 0),
    ("ckpt-no-fingerprint", lambda t, g: ["train", DIGITS, "--out", _ckpt_meta(t, g, lambda m: m.pop("fingerprint")), "--resume"], "metadata lacks 'fingerprint'", 0),
    ("ckpt-layout-text", lambda t, g: ["train", DIGITS, "--out", _ckpt_meta(t, g, lambda m: m.update(layout="x")), "--resume"], "metadata 'layout' is str", 0),
    ("ckpt-params-shape", lambda t, g: ["train", DIGITS, "--out", _ckpt_meta(t, g, lambda m: None, lambda a: a.update(params=a["params"][:-1])), "--resume"], "array 'params' is float32", 0),
    ("ckpt-params-dtype", lambda t, g: ["train", DIGITS, "--out", _ckpt_meta(t, g, lambda m: None, lambda a: a.update(params=a["params"].astype(np.float64))), "--resume"], "array 'params' is float64", 0),
    ("ckpt-params-nan", lambda t, g: ["train", DIGITS, "--out", _ckpt_meta(t, g, lambda m: None, lambda a: a["params"].__setitem__(0, np.nan)), "--resume"], "non-finite values", 0),
    ("ckpt-opt-state-missing", lambda t, g: ["train", DIGITS, "--out", _ckpt_meta(t, g, lambda m: None, lambda a: a.pop("opt.buf")), "--resume"], "lacks optimizer state 'buf'", 0),
    ("ckpt-run-mistyped", lambda t, g: ["train", DIGITS, "--out", _ckpt_meta(t, g, lambda m: m["run"].update(history="x")), "--resume"], "metadata 'run.history'", 0),
    # --- a checkpoint's step against the flags and the run's length (the good run is at step 3)
    ("ckpt-beyond-the-end", lambda t, g: ["train", DIGITS, "--out", g, "--resume", "--set", "train.max_steps=2"], "checkpoint.npz is at step 3, beyond the end of this config's run (step 2 = 0.11 epochs of 19 steps); it was made with train.max_steps=3: resume with --set train.max_steps=3 (or any length past step 3), or start afresh with --overwrite", 2),
    ("ckpt-beyond-the-end-local", lambda t, g: ["local", "-n", "2", DIGITS, "--out", str(g), "--resume", "--set", "train.max_steps=2"], "is at step 3, beyond the end", 0),
    ("stop-at-the-checkpoint", lambda t, g: ["train", DIGITS, "--out", g, "--resume", "--set", "train.max_steps=9", "--stop-at-step", "3"], "--stop-at-step 3: the run is already at step 3", 2),
    ("stop-before-the-checkpoint", lambda t, g: ["train", DIGITS, "--out", g, "--resume", "--set", "train.max_steps=9", "--stop-at-step", "1"], "--stop-at-step 1: the run is already at step 3", 0),
    ("stop-before-a-complete-run", lambda t, g: ["local", "-n", "2", DIGITS, "--out", str(g), "--resume", "--set", "train.max_steps=3", "--stop-at-step", "2"], "--stop-at-step 2: the run is already at step 3", 0),
    ("submit-stop-before-the-checkpoint", lambda t, g: ["submit", DIGITS, "--local", "--out", str(g), "--resume", "--stop-at-step", "2"], "--stop-at-step 2: the run is already at step 3", 0),
    ("ckpt-every-mismatch-named", lambda t, g: ["train", DIGITS, "--out", g, "--resume", "--set", "model.hidden=[32]", "--set", "optim.name=adam", "--set", "train.seed=4", "--set", "train.dtype=float64"], "does not match the config: model.hidden is [128, 64] in the checkpoint but [32] now; optim.name is 'sgd' in the checkpoint but 'adam' now; train.dtype is 'float32' in the checkpoint but 'float64' now; train.seed is 0 in the checkpoint but 4 now (resume with the settings", 2),
    ("ckpt-other-layout", lambda t, g: ["train", DIGITS, "--out", _ckpt_meta(t, g, lambda m: m["layout"].pop()), "--resume"], "another model layout", 0),
    # --- data files
    ("mnist-path-is-file", lambda t, g: ["train", MNIST, "--set", f"data.path={_file_in_the_way(t)}"], "is a file, expected a folder", 0),
    ("mnist-negative-label", lambda t, g: ["train", MNIST, *_mnist(t, lambda d: _mnist_labels(d, [-1] * 20, 0x09))], "label -1 (item 0) is outside [0, 10)", 0),
    ("mnist-label-too-big", lambda t, g: ["train", MNIST, *_mnist(t, lambda d: _mnist_labels(d, [3] * 7 + [200] + [1] * 12))], "label 200 (item 7) is outside [0, 10)", 2),
    ("mnist-label-vs-n-classes", lambda t, g: ["train", MNIST, "--set", "data.n_classes=5", *_mnist(t, lambda d: _mnist_labels(d, [7] * 20))], "outside [0, 5)", 0),
    ("mnist-float-labels", lambda t, g: ["train", MNIST, *_mnist(t, lambda d: write_idx(d / "train-labels-idx1-ubyte", np.zeros(20), magic_type=0x08) or (d / "train-labels-idx1-ubyte").write_bytes(b"\0\0\x0d\x01" + (20).to_bytes(4, "big") + np.zeros(20, ">f4").tobytes()))], "labels of type", 0),
    ("mnist-test-shape", lambda t, g: ["train", MNIST, *_mnist(t, lambda d: write_idx(d / "t10k-images-idx3-ubyte", np.zeros((10, 32, 32))))], "test images are 32x32 but the training images", 2),
    ("mnist-file-is-fifo", lambda t, g: ["train", MNIST, *_mnist(t, lambda d: (os.remove(d / "t10k-labels-idx1-ubyte"), os.mkfifo(d / "t10k-labels-idx1-ubyte")))], "not a regular file", 0),
    ("mnist-path-tilde-missing", lambda t, g: ["train", MNIST, "--set", "data.path=~/no-such-mnist-dir"], "no-such-mnist-dir does not exist", 0),
    ("text-shorter-than-context", lambda t, g: ["train", GPT, "--set", f"data.path={_file(t, b'short text')}"], "fewer than model.block_size + 2", 0),
    ("text-folder", lambda t, g: ["train", GPT, "--set", f"data.path={t}"], "is a folder, expected a file", 0),
    ("text-fifo", lambda t, g: ["train", GPT, "--set", f"data.path={_fifo(t)}"], "not a regular file", 0),
    # --- local: refused once, before mpiexec starts
    ("local-zero-ranks", lambda t, g: ["local", "-n", "0", DIGITS], "argument -n/--ranks: expected a number of ranks (an integer >= 1), got '0'", 0),
    ("local-bad-key", lambda t, g: ["local", "-n", "2", DIGITS, "--set", "train.bach_size=3"], "did you mean 'batch_size'", 0),
    ("local-out-taken", lambda t, g: ["local", "-n", "2", DIGITS, "--out", str(g)], "already exists: pass --resume", 0),
    ("local-batch-below-ranks", lambda t, g: ["local", "-n", "3", DIGITS, "--set", "train.batch_size=2"], "at least the number of ranks (3)", 0),
    ("local-data-missing", lambda t, g: ["local", "-n", "2", MNIST, "--set", f"data.path={t / 'gone'}"], "gone does not exist", 0),
    # --- scaling: every point checked before the first runs
    ("scaling-ranks-text", lambda t, g: ["scaling", DIGITS, "--mode", "weak", "--ranks", "1,x", "--out", str(t / "s")], "--ranks: expected a comma-separated list", 0),
    ("scaling-ranks-twice", lambda t, g: ["scaling", DIGITS, "--mode", "weak", "--ranks", "1,2,1", "--out", str(t / "s")], "--ranks: 1 given twice in '1,2,1': expected distinct world sizes (use --repeats N", 0),
    ("scaling-ranks-zero", lambda t, g: ["scaling", DIGITS, "--mode", "weak", "--ranks", "0,2", "--out", str(t / "s")], "--ranks: expected positive integers", 0),
    ("scaling-steps-zero", lambda t, g: ["scaling", DIGITS, "--mode", "weak", "--ranks", "1", "--steps", "0", "--out", str(t / "s")], "argument --steps: expected a number of steps (an integer >= 1), got '0'", 0),
    ("scaling-batch-zero", lambda t, g: ["scaling", DIGITS, "--mode", "strong", "--ranks", "1", "--batch", "0", "--out", str(t / "s")], "argument --batch: expected a batch size (an integer >= 1), got '0'", 0),
    ("scaling-batch-below-ranks", lambda t, g: ["scaling", DIGITS, "--mode", "strong", "--ranks", "1,4", "--batch", "2", "--out", str(t / "s")], "needs a global batch >= 4", 0),
    ("scaling-out-file", lambda t, g: ["scaling", DIGITS, "--mode", "weak", "--ranks", "1", "--out", _sweep_out(t)], "is a file, expected a folder", 0),
    ("scaling-bad-key", lambda t, g: ["scaling", DIGITS, "--mode", "weak", "--ranks", "1", "--set", "optim.lr=-1", "--out", str(t / "s")], "optim.lr: expected a value > 0", 0),
    ("scaling-mode", lambda t, g: ["scaling", DIGITS, "--mode", "diagonal", "--ranks", "1", "--out", str(t / "s")], "invalid choice", 0),
    ("scaling-compare-no-equals", lambda t, g: ["scaling", DIGITS, "--mode", "weak", "--ranks", "1", "--out", str(t / "s"), "--compare", "comm.algorithm"], "--compare 'comm.algorithm': expected KEY=VALUE1,VALUE2", 0),
    ("scaling-compare-empty-key", lambda t, g: ["scaling", DIGITS, "--mode", "weak", "--ranks", "1", "--out", str(t / "s"), "--compare", "=mpi,ring"], "--compare '=mpi,ring': expected KEY=VALUE1,VALUE2", 0),
    ("scaling-compare-one-value", lambda t, g: ["scaling", DIGITS, "--mode", "weak", "--ranks", "1", "--out", str(t / "s"), "--compare", "comm.algorithm=ring"], "expected two or more values to compare (one value for every point is --set comm.algorithm=ring)", 0),
    ("scaling-compare-empty-value", lambda t, g: ["scaling", DIGITS, "--mode", "weak", "--ranks", "1", "--out", str(t / "s"), "--compare", "comm.algorithm=mpi,"], "an empty value", 0),
    ("scaling-compare-same-value", lambda t, g: ["scaling", DIGITS, "--mode", "weak", "--ranks", "1", "--out", str(t / "s"), "--compare", "comm.algorithm=ring,ring"], "ring given twice; expected distinct values", 0),
    ("scaling-compare-key-twice", lambda t, g: ["scaling", DIGITS, "--mode", "weak", "--ranks", "1", "--out", str(t / "s"), "--compare", "comm.algorithm=mpi,ring", "--compare", "comm.algorithm=ring,mpi"], "--compare comm.algorithm: given twice", 0),
    ("scaling-compare-and-set", lambda t, g: ["scaling", DIGITS, "--mode", "weak", "--ranks", "1", "--out", str(t / "s"), "--set", "comm.algorithm=ring", "--compare", "comm.algorithm=mpi,ring"], "also given with --set comm.algorithm", 0),
    ("scaling-compare-sweep-key", lambda t, g: ["scaling", DIGITS, "--mode", "weak", "--ranks", "1", "--out", str(t / "s"), "--compare", "train.batch_size=8,16"], "the sweep sets it at every point", 0),
    ("scaling-compare-unknown-key", lambda t, g: ["scaling", DIGITS, "--mode", "weak", "--ranks", "1", "--out", str(t / "s"), "--compare", "comm.algoritm=mpi,ring"], "unknown config key 'comm.algoritm'", 0),
    ("scaling-compare-bad-value", lambda t, g: ["scaling", DIGITS, "--mode", "weak", "--ranks", "1", "--out", str(t / "s"), "--compare", "comm.algorithm=mpi,tree"], "comm.algorithm=tree is refused in every setting compared", 0),
    ("scaling-compare-never-valid", lambda t, g: ["scaling", DIGITS, "--mode", "weak", "--ranks", "1", "--out", str(t / "s"), "--compare", "comm.compress=none,bf16"], "comm.compress=bf16 is refused in every setting compared", 0),
    ("scaling-compare-same-file-name", lambda t, g: ["scaling", DIGITS, "--mode", "weak", "--ranks", "1", "--out", str(t / "s"), "--compare", "logging.wandb_project=a b,a-b"], "would share the file name", 0),
    ("scaling-compare-other-sweep", lambda t, g: ["scaling", DIGITS, "--mode", "weak", "--ranks", "1", "--batch", "64", "--steps", "20", "--compare", "comm.algorithm=mpi,ring", "--out", _old_sweep(t)], "holds another sweep (compare none before, comm.algorithm=mpi,ring now)", 0),
    # --- report, bench-comm, sample, download
    ("report-no-runs", lambda t, g: ["report", str(t)], "runs not found", 0),
    ("report-empty-runs", lambda t, g: ["report", str((t / "r" / "runs").mkdir(parents=True) or t / "r")], "no run files", 0),
    ("report-bad-json", lambda t, g: ["report", str(((t / "r" / "runs").mkdir(parents=True), (t / "r" / "runs" / "x.json").write_text("{")) and t / "r")], "x.json", 0),
    ("bench-comm-one-rank", lambda t, g: ["bench-comm", "-n", "1", "--out", str(t / "b")], "argument -n/--ranks: expected a number of ranks (an integer >= 2), got '1'", 0),
    ("bench-comm-algorithm", lambda t, g: ["bench-comm", "--algorithm", "tree", "--out", str(t / "b")], "argument --algorithm: invalid choice: 'tree'", 0),
    ("bench-comm-half-model", lambda t, g: ["bench-comm", "--alpha-us", "2", "--out", str(t / "b")], "give both", 0),
    ("sample-missing", lambda t, g: ["sample", str(t / "none.npz")], "none.npz does not exist", 0),
    ("sample-random-bytes", lambda t, g: ["sample", str(_ckpt(t, g, "random") / "checkpoint.npz")], "is not an .npz file", 0),
    ("sample-negative-tokens", lambda t, g: ["sample", str(g / "checkpoint.npz"), "--tokens", "-1"], "argument --tokens: expected a count of characters (an integer >= 0), got '-1'", 0),
    ("sample-negative-temperature", lambda t, g: ["sample", str(g / "checkpoint.npz"), "--temperature", "-1"], "argument --temperature: expected a temperature: a finite number >= 0, got '-1'", 0),
    ("sample-nan-temperature", lambda t, g: ["sample", str(g / "checkpoint.npz"), "--temperature", "nan"], "--temperature", 0),
    ("sample-negative-top-k", lambda t, g: ["sample", str(g / "checkpoint.npz"), "--top-k", "-2"], "argument --top-k: expected a count (an integer >= 0), got '-2'", 0),
    ("sample-empty-prompt", lambda t, g: ["sample", _gpt_ckpt(t), "--prompt", ""], "--prompt: empty", 0),
    ("sample-bad-vocab", lambda t, g: ["sample", _gpt_vocab(t, 7)], "its vocabulary is 7", 0),
    ("download-to-file", lambda t, g: ["download", "mnist", "--to", _file_in_the_way(t)], "is a file, expected a folder", 0),
    ("download-unreachable", lambda t, g: ["download", "fashion-mnist", "--to", str(t / "dl"), "--base-url", "http://127.0.0.1:9/"], "cannot be reached", 0),
    # --- found by a new user's walkthrough
    ("flag-abbreviation", lambda t, g: ["train", DIGITS, "--ov"], "unrecognized arguments: --ov", 0),
    ("unknown-flag-names-command", lambda t, g: ["train", DIGITS, "--ouput", "x"], "launch.py train: unrecognized arguments: --ouput", 0),
    ("config-empty-path", lambda t, g: ["train", ""], "expected a YAML config file, got an empty string", 0),
    ("scaling-out-empty", lambda t, g: ["scaling", DIGITS, "--mode", "weak", "--ranks", "1", "--out", ""], "expected an output folder, got an empty string", 0),
    ("report-empty", lambda t, g: ["report", ""], "expected a sweep folder, got an empty string", 0),
    ("report-on-a-file", lambda t, g: ["report", _file_in_the_way(t)], "is a file, expected the --out folder", 0),
    ("download-to-empty", lambda t, g: ["download", "mnist", "--to", ""], "expected a destination folder, got an empty string", 0),
    ("sample-negative-seed", lambda t, g: ["sample", str(g / "checkpoint.npz"), "--seed", "-1"], "argument --seed: expected a seed (an integer >= 0)", 0),
    ("sample-inf-temperature", lambda t, g: ["sample", str(g / "checkpoint.npz"), "--temperature", "inf"], "a finite number >= 0", 0),
    ("accumulate-beyond-rows", lambda t, g: ["train", DIGITS, "--set", "comm.accumulate=100"], "comm.accumulate: 100 micro-batches", 2),
    ("set-top-level-key", lambda t, g: ["train", DIGITS, "--set", "lr=0.1"], "did you mean 'optim.lr'", 0),
    ("scaling-too-many-ranks", lambda t, g: ["scaling", DIGITS, "--mode", "weak", "--ranks", "1000", "--out", str(t / "s")], "would only thrash", 0),
    ("scaling-other-sweep", lambda t, g: ["scaling", DIGITS, "--mode", "strong", "--ranks", "1", "--out", _old_sweep(t)], "holds another sweep (mode 'weak' before, 'strong' now", 0),
    ("bench-comm-bad-data", lambda t, g: ["bench-comm", "--out", str(t / "b"), "--configs", _cfg(t, "data:\n  name: mnist\n  path: /nonexistent\n")], "/nonexistent does not exist", 0),
    # --- absurd local worlds: one cap for every command that starts ranks here, and their memory
    ("local-too-many-ranks", lambda t, g: ["local", "-n", "400", DIGITS], "400 ranks on the", 0),
    ("bench-comm-measured-out", lambda t, g: ["bench-comm", "--out", _measured(t)], "holds a measurement (bench_comm.json); choose another --out, or --overwrite to replace it", 0),
    ("bench-comm-too-many-ranks", lambda t, g: ["bench-comm", "-n", "500", "--out", str(t / "b")], "500 ranks on the", 0),
    ("submit-local-too-many-ranks", lambda t, g: ["submit", DIGITS, "--local", "--tasks-per-node", "900", "--out", str(t / "j")], "900 ranks on the", 0),
    ("local-memory", lambda t, g: ["local", "-n", "2", DIGITS, "--set", "model.hidden=[400000,400000]"], "local -n 2: the run needs about", 0),
    ("scaling-memory", lambda t, g: ["scaling", DIGITS, "--mode", "weak", "--ranks", "1,2", "--set", "model.hidden=[400000,400000]", "--out", str(t / "s")], "the run needs about", 0),
    ("config-bare-name-hint", lambda t, g: ["train", "mlp_digits.yml"], "does not exist; did you mean", 0),
    ("download-not-a-url", lambda t, g: ["download", "mnist", "--to", str(t / "dl"), "--base-url", "nowhere"], "cannot be reached", 0),
    # --- plug-ins (docs/extending.md): the LeNet-5 example and its optimizer, every wrong form
    ("cnn-kernel-beyond-image", lambda t, g: [*LENET_SYNTH, "--set", "model.options.kernel=29", "--set", "model.options.padding=0"], "model.options.kernel: 29 is too large for 28x28 images with padding 0 and pool 2: expected 1 to 9", 2),
    ("cnn-kernel-beyond-second-map", lambda t, g: [*LENET_SYNTH, "--set", "model.options.kernel=12"], "model.options.kernel: 12 is too large for 28x28 images with padding 2 and pool 2: expected 1 to 10", 0),
    ("cnn-pool-beyond-map", lambda t, g: [*LENET_SYNTH, "--set", "model.options.pool=29"], "model.options.pool: 29 is too large for 28x28 images with padding 2 and kernel 5: expected 1 to 3", 0),
    ("cnn-image-vs-data", lambda t, g: [*LENET_SYNTH, "--set", "model.options.image=[14,14,1]"], "model.options.image: 14x14x1 = 196 values per row, but the data's rows have 784 features", 0),
    ("cnn-option-type", lambda t, g: [*LENET_SYNTH, "--set", "model.options.kernel=five"], "model.options.kernel: expected an integer, got 'five'", 0),
    ("cnn-option-unknown", lambda t, g: [*LENET_SYNTH, "--set", "model.options.kernels=3"], "unknown config key 'model.options.kernels' (did you mean 'kernel'?)", 2),
    ("cnn-option-list-item", lambda t, g: [*LENET_SYNTH, "--set", "model.options.channels=[6,0]"], "model.options.channels[1]: expected a value >= 1", 0),
    ("cnn-two-channels", lambda t, g: [*LENET_SYNTH, "--set", "model.options.channels=[6]"], "expected image [height, width, channels] and two channels", 0),
    ("plugin-file-missing", lambda t, g: [*LENET_SYNTH, "--set", "model.name=examples/cnn/lenet9.py:LeNet5"], "model.name: examples/cnn/lenet9.py not found", 2),
    ("plugin-syntax-error", lambda t, g: [*LENET_SYNTH, "--set", _plugin(t, "x = 1\ndef f(:\n")], "failed: SyntaxError: invalid syntax ({tmp}/sub/../bad_plugin.py, line 2)", 0),
    ("plugin-imports-bad-file", lambda t, g: [*LENET_SYNTH, "--set", _plugin(t, "import bad_helper\n", "def g(:\n")], "SyntaxError: invalid syntax ({tmp}/bad_helper.py, line 1)", 0),
    ("plugin-class-missing", lambda t, g: [*LENET_SYNTH, "--set", "model.name=examples/cnn/lenet.py:LeNet"], "has no attribute 'LeNet' (it defines", 0),
    ("plugin-not-a-model", lambda t, g: [*LENET_SYNTH, "--set", "model.name=examples/cnn/lenet.py:Options"], "is not a model: it lacks loss(x, t, scale)", 0),
    ("plugin-module-missing", lambda t, g: [*LENET_SYNTH, "--set", "model.name=nosuchpkg.models:Net"], "model.name: no module named 'nosuchpkg'", 0),
    ("plugin-optim-is-model", lambda t, g: [*LENET_SYNTH, "--set", "optim.name=examples/cnn/lenet.py:LeNet5"], "optim.name: examples/cnn/lenet.py:LeNet5 is not an optimizer", 0),
    ("plugin-optim-option", lambda t, g: [*LENET_SYNTH, "--set", "optim.name=examples/optimizers/lion.py:Lion", "--set", "optim.options.betas=[0.9,1.5]"], "optim.options.betas[1]: expected a value < 1.0", 0),
    ("plugin-optim-builtin-key", lambda t, g: [*LENET_SYNTH, "--set", "optim.name=examples/optimizers/lion.py:Lion", "--set", "optim.momentum=0.9"], "optim.momentum: a key of the built-in optims; the plug-in examples/optimizers/lion.py:Lion takes its own keys under optim.options", 0),
    ("gradcheck-unknown", lambda t, g: ["gradcheck", "conv3d"], "gradcheck: 'conv3d' is neither a built-in", 0),
    ("gradcheck-file-missing", lambda t, g: ["gradcheck", "examples/cnn/nofile.py:LeNet5"], "gradcheck: examples/cnn/nofile.py not found", 0),
    ("gradcheck-no-hook", lambda t, g: ["gradcheck", "examples/cnn/lenet.py:Options"], "gradcheck: examples/cnn/lenet.py:Options", 0),
    # --- ZeRO-1 and the trace (issue 17)
    ("zero-out-of-range", lambda t, g: ["train", DIGITS, "--set", "optim.zero=2"], "optim.zero: expected a value <= 1, got 2", 0),
    ("zero-not-a-number", lambda t, g: ["train", DIGITS, "--set", "optim.zero=yes"], "optim.zero: expected an integer, got 'yes'", 0),
    ("zero-with-overlap", lambda t, g: ["train", DIGITS, "--set", "optim.zero=1", "--set", "comm.overlap=true"], "optim.zero: 1 reduce-scatters the gradients after backward and does not overlap", 0),
    ("zero-with-ring", lambda t, g: ["train", DIGITS, "--set", "optim.zero=1", "--set", "comm.algorithm=ring", "--set", "comm.compress=bf16"], "optim.zero: 1 reduce-scatters with MPI_Reduce_scatter, not the ring (nor its 16-bit compression); set comm.algorithm=mpi", 0),
    ("zero-plugin-not-elementwise", lambda t, g: ["train", DIGITS, "--set", "optim.momentum=0", "--set", "optim.nesterov=false", "--set", "optim.zero=1", "--set", _plain_optimizer(t)], "does not declare elementwise = True", 2),
    ("trace-not-a-bool", lambda t, g: ["train", DIGITS, "--set", "logging.trace=maybe"], "logging.trace: expected true or false, got 'maybe'", 0),
]


def _measured(tmp):
    """A bench-comm --out folder that already holds a measurement."""
    d = tmp / "measured"
    d.mkdir(exist_ok=True)
    (d / "bench_comm.json").write_text("{}")
    return str(d)


def _plain_optimizer(tmp):
    """A plug-in optimizer that does not say it is element-wise (so ZeRO-1 may not slice it)."""
    p = tmp / "plain_opt.py"
    p.write_text("from ddp_scratch.nn.optim import Optimizer\n\n\nclass Plain(Optimizer):\n"
                 "    def __init__(self, space, lr, weight_decay=0.0, maximize=False, options=None):\n"
                 "        super().__init__(space, lr, weight_decay, maximize)\n\n"
                 "    def step(self, lr=None):\n        self.p -= (lr or self.lr) * self.g\n")
    return f"optim.name={p}:Plain"


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
        assert err.startswith("error:") and fragment.replace("{tmp}", str(tmp_path)) in err
    for f, data in before.items():
        assert (good / f).read_bytes() == data, f"{f} of a good run was changed"
    assert json.loads(before["summary.json"])["status"] == "completed"


def test_table_is_large_enough():
    assert len(CASES) >= 80 and len({c[0] for c in CASES}) == len(CASES)
