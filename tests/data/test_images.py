"""Sharding like a distributed sampler, MNIST-format IDX files (real ones from Debian's
dataset-fashion-mnist), and the checksum-verified download against a loopback HTTP server."""
import gzip
import http.server
import os
import shutil
import threading

import numpy as np
import pytest

from conftest import make_mnist_dir, need_fashion, write_idx
from ddp_scratch.data.images import load_digits, load_mnist, read_idx
from ddp_scratch.data.sharding import epoch_order, rank_bounds, rank_shard
from ddp_scratch.errors import DataError



# ----------------------------------------------------------------------------- sharding

@pytest.mark.parametrize("n,batch,world,tail", [(100, 10, 2, "drop"), (103, 10, 3, "drop"),
                                                (103, 10, 3, "pad"), (97, 16, 4, "pad"), (50, 7, 7, "drop")])
def test_shards_disjoint_complete_and_like_one_rank(n, batch, world, tail):
    order = epoch_order(n, batch, seed=1, epoch=0, tail=tail)
    shards = [rank_shard(n, batch, 1, 0, r, world, tail) for r in range(world)]
    allidx = np.concatenate(shards)
    assert sorted(allidx.tolist()) == sorted(order.ravel().tolist())
    if tail == "drop":
        assert len(set(allidx.tolist())) == len(allidx) == (n // batch) * batch   # disjoint
    else:
        assert set(allidx.tolist()) == set(range(n))                              # complete
        assert len(allidx) == -(-n // batch) * batch
    # per step, the union of the rank slices is exactly the global mini-batch
    for step in range(len(order)):
        parts = [order[step, slice(*rank_bounds(batch, r, world))] for r in range(world)]
        assert np.array_equal(np.concatenate(parts), order[step])
    sizes = [hi - lo for lo, hi in (rank_bounds(batch, r, world) for r in range(world))]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == batch
    # every rank runs the same number of steps, so no rank waits alone in a collective
    assert len({len(s) // max(1, (hi - lo)) for s, (lo, hi) in
                zip(shards, (rank_bounds(batch, r, world) for r in range(world)))}) == 1


def test_shards_change_each_epoch_and_repeat_on_rerun():
    a0 = rank_shard(1000, 32, 5, 0, 0, 2)
    a1 = rank_shard(1000, 32, 5, 1, 0, 2)
    assert not np.array_equal(a0, a1)
    assert np.array_equal(a0, rank_shard(1000, 32, 5, 0, 0, 2))
    assert not np.array_equal(a0, rank_shard(1000, 32, 6, 0, 0, 2))


# ----------------------------------------------------------------------------- files

@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip_raw_and_gzip(tmp_path, gz):
    make_mnist_dir(tmp_path, gz=gz)
    (Xtr, ytr), (Xte, yte) = load_mnist(str(tmp_path))
    assert Xtr.shape == (20, 784) and Xte.shape == (10, 784) and ytr.shape == (20,)
    assert 0 <= Xtr.min() and Xtr.max() <= 1


def test_real_fashion_mnist_from_debian():
    (Xtr, ytr), (Xte, yte) = load_mnist(need_fashion())
    assert Xtr.shape == (60000, 784) and Xte.shape == (10000, 784)
    assert sorted(set(ytr.tolist())) == list(range(10))
    assert np.bincount(yte).tolist() == [1000] * 10


@pytest.mark.parametrize("case,fragment", [
    ("bad_magic", "bad IDX magic"), ("truncated", "truncated"), ("trailing", "trailing bytes"),
    ("empty", "is empty"), ("bad_gzip", "(corrupt|truncated) gzip stream"), ("missing", "does not exist")])
def test_corrupt_idx_errors(tmp_path, case, fragment):
    p = tmp_path / "f-idx1-ubyte"
    if case == "bad_magic":
        p.write_bytes(b"\x12\x34\x08\x01" + b"\0" * 10)
    elif case == "truncated":
        write_idx(p, np.arange(10), cut=3)
    elif case == "trailing":
        write_idx(p, np.arange(10))
        p.write_bytes(p.read_bytes() + b"xx")
    elif case == "empty":
        p.write_bytes(b"")
    elif case == "bad_gzip":
        p.write_bytes(gzip.compress(b"\0\0\x08\x01" + b"\0\0\0\x05" + b"abcde")[:-6])
    with pytest.raises(DataError, match=fragment) as e:
        read_idx(str(p))
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_label_count_mismatch(tmp_path):
    make_mnist_dir(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(19))
    with pytest.raises(DataError, match="20 images but 19 labels"):
        load_mnist(str(tmp_path))


def test_digits_embedded():
    X, y = load_digits()
    assert X.shape == (1797, 64) and np.bincount(y).min() > 170 and 0 <= X.min() and X.max() <= 1


# ----------------------------------------------------------------------------- download

class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


@pytest.fixture
def http_dir(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a, **k: _Quiet(*a, directory=str(root), **k))
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}/"
    srv.shutdown()


def test_download_verifies_decompressed_checksums(http_dir, tmp_path, launch):
    src = need_fashion()
    root, url = http_dir
    for f in os.listdir(src):
        shutil.copy(os.path.join(src, f), root / f)
    dest = tmp_path / "fm"
    r = launch("download", "fashion-mnist", "--to", dest, "--base-url", url)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(dest)) == sorted(f[:-3] for f in os.listdir(src))
    (Xtr, _), _ = load_mnist(str(dest))
    assert Xtr.shape == (60000, 784)
    r = launch("download", "fashion-mnist", "--to", dest, "--base-url", url)   # present: not refetched
    assert r.returncode == 0 and r.stdout.count("present, checksum ok") == 4


def test_download_rejects_tampered_data_and_writes_nothing(http_dir, tmp_path, launch):
    src = need_fashion()
    root, url = http_dir
    for f in os.listdir(src):
        shutil.copy(os.path.join(src, f), root / f)
    raw = bytearray(gzip.decompress((root / "train-images-idx3-ubyte.gz").read_bytes()))
    raw[5000] ^= 0xFF   # one pixel flipped, re-compressed: a valid gzip with the wrong content
    (root / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    dest = tmp_path / "fm"
    r = launch("download", "fashion-mnist", "--to", dest, "--base-url", url)
    assert r.returncode == 2 and "SHA-256" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (dest / "train-images-idx3-ubyte").exists()


def test_download_unreachable_server_is_one_line(tmp_path, launch):
    r = launch("download", "mnist", "--to", tmp_path / "m", "--base-url", "http://127.0.0.1:9/")
    assert r.returncode == 2 and r.stderr.startswith("error: download") and "Traceback" not in r.stderr


def test_a_cut_gzip_file_is_never_estimated_beyond_what_it_can_hold(tmp_path):
    """The memory estimate before reading comes from the IDX header inside the gzip stream, not
    from gzip's size trailer, which is garbage in a cut file (a student's half-finished download
    was said to need 50 GiB). Every cut of a real gzip'd IDX file: an estimate deflate can make
    from it (or the file's size), then the read says the file is cut."""
    from ddp_scratch.data.images import DEFLATE_MAX_RATIO, stored_size
    whole = tmp_path / "whole.gz"
    write_idx(whole, np.random.default_rng(0).integers(0, 255, (40, 28, 28)).astype(np.uint8), gz=True)
    raw = whole.read_bytes()
    assert stored_size(whole) == 16 + 40 * 28 * 28
    seen = set()
    for cut in range(2, len(raw)):              # (one byte is not yet gzip: "bad IDX magic")
        p = tmp_path / "cut.gz"
        p.write_bytes(raw[:cut])
        est = stored_size(p)
        assert est <= max(cut, DEFLATE_MAX_RATIO * cut), (cut, est)
        with pytest.raises(DataError) as e:
            read_idx(p)
        seen.add(str(e.value).split(": ", 1)[1])
    print(sorted(seen))
    assert all("gzip" in s or "truncated" in s for s in seen)
