"""Every file the tool reads can be wrong in ways nobody listed: hypothesis throws random and
mutated bytes at the readers of IDX files, text files and checkpoints (down to the trainer's
resume checks) and asserts the only outcomes are a result or the one-line UserError."""
import gzip
import io
import json
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT
from ddp_scratch.data.images import read_idx
from ddp_scratch.data.text import read_text
from ddp_scratch.errors import UserError

FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def one_line(e):
    assert str(e) and "\n" not in str(e)


def idx_bytes(arr, code=0x08):
    arr = np.asarray(arr)
    return bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape) + arr.tobytes()


VALID_IDX = idx_bytes(np.arange(60, dtype=np.uint8).reshape(5, 3, 4))


@st.composite
def mutated(draw, valid):
    """A valid file with a few bytes flipped, cut short, or extended, or plain random bytes."""
    kind = draw(st.sampled_from(["flip", "cut", "extend", "random", "gzip"]))
    data = bytearray(valid)
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif kind == "cut":
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif kind == "extend":
        data += draw(st.binary(min_size=1, max_size=16))
    elif kind == "random":
        data = bytearray(draw(st.binary(max_size=300)))
    else:
        packed = gzip.compress(bytes(data))
        data = bytearray(packed[:draw(st.integers(0, len(packed)))])
    return bytes(data)


@FAST
@given(mutated(VALID_IDX))
def test_idx_reader_gives_an_array_or_one_line(tmp_path, data):
    p = tmp_path / "f-idx3-ubyte"
    p.write_bytes(data)
    try:
        a = read_idx(str(p))
    except UserError as e:
        one_line(e)
        return
    assert isinstance(a, np.ndarray) and a.ndim >= 1


@FAST
@given(st.binary(max_size=400) | st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")))
def test_text_reader_gives_text_or_one_line(tmp_path, data):
    p = tmp_path / "t.txt"
    p.write_bytes(data)
    try:
        assert isinstance(read_text(str(p)), str)
    except UserError as e:
        one_line(e)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A trainer set up on the digits MLP, and a valid checkpoint of it (bytes)."""
    from ddp_scratch.config import load_config
    from ddp_scratch.parallel.world import Comm
    from ddp_scratch.run.trainer import Options, Trainer
    out = tmp_path_factory.mktemp("ck")
    cfg = load_config(f"{ROOT}/experiments/mlp_digits.yaml", ["train.max_steps=3", "logging.progress=false"])
    tr = Trainer(cfg, Options(out=str(out), quiet=True), comm=Comm(serial=True))
    tr.run()
    return tr, (out / "checkpoint.npz").read_bytes()


def _rezip(valid, edit):
    """The checkpoint with its metadata or arrays edited (a well-formed zip, wrong contents)."""
    arrays, meta = _load_bytes(valid)
    edit(arrays, meta)
    buf = io.BytesIO()
    payload = {"__meta__": np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays}
    np.savez(buf, **payload)
    return buf.getvalue()


def _load_bytes(valid):
    with zipfile.ZipFile(io.BytesIO(valid)) as z:
        arrays = {n[:-4]: np.load(io.BytesIO(z.read(n))) for n in z.namelist()}
    meta = json.loads(arrays.pop("__meta__").tobytes())
    return arrays, meta


json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=5),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                           max_leaves=6)
META_KEYS = ["step", "opt_t", "fingerprint", "layout", "run", "format", "version", "config", "vocab"]


@st.composite
def checkpoint_bytes(draw, valid):
    how = draw(st.sampled_from(["bytes", "meta", "array"]))
    if how == "bytes":
        return draw(mutated(valid))
    if how == "meta":
        key, value = draw(st.sampled_from(META_KEYS)), draw(json_values)
        if draw(st.booleans()):
            return _rezip(valid, lambda a, m: m.pop(key, None))
        if key == "run" and draw(st.booleans()):
            sub = draw(st.sampled_from(["history", "ep_loss", "ep_steps", "skipped", "train_s"]))
            return _rezip(valid, lambda a, m: m["run"].__setitem__(sub, value))
        return _rezip(valid, lambda a, m: m.__setitem__(key, value))
    name = draw(st.sampled_from(["params", "opt.buf"]))
    shape = draw(st.sampled_from([(0,), (3,), (2, 2), None]))
    dtype = draw(st.sampled_from(["float32", "float64", "int8", "complex64", "bool"]))

    def edit(a, m):
        base = a[name] if shape is None else np.zeros(shape)
        a[name] = base.astype(dtype)
    return _rezip(valid, edit)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_resume_from_a_damaged_checkpoint_resumes_or_says_one_line(trained, data):
    tr, valid = trained
    blob = data.draw(checkpoint_bytes(valid))
    with open(tr.ckpt_path, "wb") as f:
        f.write(blob)
    try:
        tr._load_checkpoint()
    except UserError as e:
        one_line(e)
        return
    assert np.isfinite(tr.space.params).all() and tr.step >= 0


def test_the_valid_checkpoint_itself_loads(trained):
    tr, valid = trained
    with open(tr.ckpt_path, "wb") as f:
        f.write(valid)
    tr._load_checkpoint()
    assert tr.step == 3 and [h["step"] for h in tr.state.history] == [3]
