"""Image classification data: the embedded 8x8 digits, MNIST-format IDX files, synthetic
clusters, and the task that hands each rank its rows of every global batch (see sharding.py)."""
import gzip
import math
import os
import zlib

import numpy as np

from .. import backend as B
from ..errors import ConfigError, DataError
from ..fsutil import read_regular_file
from .sharding import epoch_order, rank_bounds

HERE = os.path.dirname(os.path.abspath(__file__))

# ----------------------------------------------------------------------------- files

IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


MAX_IDX_BYTES = 1 << 31          # 2 GiB of decompressed data: far above any MNIST-format set


def _gunzip(raw, path, limit):
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(raw, limit + 1)
    except zlib.error:
        raise DataError(f"data file {path}: corrupt gzip stream") from None
    if len(out) > limit:
        raise DataError(f"data file {path}: decompresses to more than {limit >> 20} MiB; refused")
    if not d.eof:
        raise DataError(f"data file {path}: truncated gzip stream")
    return out


def read_idx(path, header_only=False):
    """An IDX file (MNIST format), raw or gzip, as a numpy array; DataError if malformed.
    header_only: just (dtype, dims), checked against the file's size, without the data."""
    raw = read_regular_file(path, "data file", DataError)
    if not raw:
        raise DataError(f"data file {path} is empty (expected an IDX file: a 4-byte magic number, "
                        "the dimensions, the data)")
    if raw[:2] == b"\x1f\x8b":
        raw = _gunzip(raw, path, MAX_IDX_BYTES)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES or raw[3] == 0:
        raise DataError(f"data file {path}: bad IDX magic number {raw[:4].hex() or 'empty'} "
                        "(expected 0000 08 0N: two zero bytes, a type code, the number of dimensions)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"data file {path}: truncated IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_TYPES[raw[2]])
    need = math.prod(dims) * dtype.itemsize
    body = raw[4 + 4 * ndim:]
    if len(body) != need:
        what = "truncated" if len(body) < need else "has trailing bytes"
        raise DataError(f"data file {path}: {what}: dimensions {dims} need {need} bytes of data, found {len(body)}")
    if header_only:
        return dtype, dims
    arr = np.frombuffer(body, dtype=dtype).reshape(dims)
    if dtype.kind == "f" and not np.isfinite(arr).all():
        raise DataError(f"data file {path}: holds non-finite values (NaN or infinity)")
    return arr


MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}


DEFLATE_MAX_RATIO = 1032         # deflate cannot expand data more than this


def stored_size(path):
    """Bytes of an IDX file's content, for a memory estimate before reading it: a raw file's size;
    for gzip, what the IDX header (the first decompressed bytes) says the data holds. Where that is
    unreadable or impossible for the compressed size (a cut or corrupt file; gzip's own size
    trailer is garbage then), the compressed size: the read then says what is wrong, in its words."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if f.read(2) != b"\x1f\x8b":
            return size
        f.seek(0)
        try:
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(f.read(64 * 1024), 4 + 4 * 255)
        except zlib.error:
            return size
    if len(head) < 4 or head[2] not in IDX_TYPES or len(head) < 4 + 4 * head[3]:
        return size
    dims = [int.from_bytes(head[4 + 4 * i:8 + 4 * i], "big") for i in range(head[3])]
    content = 4 + 4 * len(dims) + math.prod(dims) * np.dtype(IDX_TYPES[head[2]]).itemsize
    return content if content <= DEFLATE_MAX_RATIO * size else size


def find_mnist_file(folder, stem):
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        p = os.path.join(folder, name)
        if os.path.exists(p):
            return p
    raise DataError(f"data.path {folder}: missing {stem} (or {stem}.gz); expected the four MNIST-format "
                    f"IDX files {', '.join(MNIST_FILES.values())}")


def check_folder(folder):
    if not os.path.exists(folder):
        raise DataError(f"data.path {folder} does not exist (expected a folder of MNIST-format IDX files)")
    if not os.path.isdir(folder):
        raise DataError(f"data.path {folder} is a file, expected a folder of MNIST-format IDX files")


def check_pair(ipath, lpath, images, labels):
    """One split's images (count, rows, cols) and labels (count,) agree; labels are class indices."""
    if len(images) != 3:
        raise DataError(f"data file {ipath}: expected 3 dimensions (count, rows, cols), got {tuple(images)}")
    if len(labels) != 1:
        raise DataError(f"data file {lpath}: expected 1 dimension (count), got {tuple(labels)}")
    if images[0] != labels[0]:
        raise DataError(f"data files {ipath} and {lpath}: {images[0]} images but {labels[0]} labels")
    if images[0] == 0:
        raise DataError(f"data file {ipath}: holds no images")


def check_labels(path, y, n_classes):
    if y.dtype.kind not in "iu":
        raise DataError(f"data file {path}: labels of type {y.dtype}, expected integer class indices")
    bad = np.flatnonzero((y < 0) | (y >= n_classes))
    if len(bad):
        i = int(bad[0])
        raise DataError(f"data file {path}: label {int(y[i])} (item {i}) is outside [0, {n_classes}) "
                        f"({len(bad)} such label(s)); data.n_classes is {n_classes}")


def load_mnist(folder, header_only=False, n_classes=10):
    """((X, y) train, (X, y) test) from a folder of the four MNIST-format IDX files; header_only:
    every check that needs no pixel data (files, headers, sizes, labels), returning nothing."""
    folder = os.path.expanduser(folder)
    check_folder(folder)
    out, shapes = {}, {}
    for split in ("train", "test"):
        ipath = find_mnist_file(folder, MNIST_FILES[f"{split}_images"])
        lpath = find_mnist_file(folder, MNIST_FILES[f"{split}_labels"])
        labels = read_idx(lpath)
        images = read_idx(ipath, header_only)
        dims = images[1] if header_only else images.shape
        check_pair(ipath, lpath, dims, labels.shape)
        check_labels(lpath, labels, n_classes)
        shapes[split] = (ipath, dims[1:])
        if not header_only:
            out[split] = (images.reshape(len(images), -1).astype(np.float64) / 255.0, labels.astype(np.int64))
    (tp, ts), (ep, es) = shapes["train"], shapes["test"]
    if ts != es:
        raise DataError(f"data file {ep}: test images are {es[0]}x{es[1]} but the training images in {tp} "
                        f"are {ts[0]}x{ts[1]}; both splits must have one shape")
    return None if header_only else (out["train"], out["test"])


def load_digits():
    """The embedded 8x8 digits (1797 samples, 64 features scaled to [0, 1], labels 0..9)."""
    with gzip.open(os.path.join(HERE, "datasets", "digits.csv.gz"), "rt") as f:
        arr = np.loadtxt(f, delimiter=",")
    return arr[:, :-1] / 16.0, arr[:, -1].astype(np.int64)


def make_synthetic(n, d, classes, seed):
    """Gaussian class clusters: learnable, any size, no file (benchmarks and scaling studies)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (classes, d))
    y = rng.integers(0, classes, n)
    X = centers[y] + rng.normal(0, 2.0, (n, d))
    return X, y.astype(np.int64)


# ----------------------------------------------------------------------------- task


def _split(n, fractions, seed):
    """Seeded split of range(n) into len(fractions)+1 parts (the remainder last)."""
    perm = np.random.default_rng(seed).permutation(n)
    parts, start = [], 0
    for f in fractions:
        k = int(round(n * f))
        parts.append(perm[start:start + k])
        start += k
    parts.append(perm[start:])
    return parts


class ClassificationTask:
    """Rank-local mini-batches of a classification dataset, resident on the device."""
    items = "samples"

    def __init__(self, cfg, rank, world):
        d, t = cfg.data, cfg.train
        if d.name == "digits":
            X, y = load_digits()
            te, va, tr = _split(len(X), [d.test_fraction, d.val_fraction], d.seed)
            splits = {"train": (X[tr], y[tr]), "val": (X[va], y[va]), "test": (X[te], y[te])}
        elif d.name == "mnist":
            (X, y), test = load_mnist(d.path, n_classes=d.n_classes)
            va, tr = _split(len(X), [d.val_fraction], d.seed)
            splits = {"train": (X[tr], y[tr]), "val": (X[va], y[va]), "test": test}
        elif d.name == "synthetic":
            X, y = make_synthetic(d.n_samples, d.n_features, d.n_classes, d.seed)
            te, va, tr = _split(len(X), [d.test_fraction, d.val_fraction], d.seed)
            splits = {"train": (X[tr], y[tr]), "val": (X[va], y[va]), "test": (X[te], y[te])}
        else:
            raise ConfigError(f"data.name: {d.name!r} is not a classification dataset")
        Xtr = splits["train"][0]
        if len(Xtr) == 0:
            raise DataError("data: the training split is empty (check data.val_fraction / data.test_fraction)")
        if d.normalize:   # one scalar mean/std from the training split, applied to every split
            mu, sd = float(Xtr.mean()), float(Xtr.std()) or 1.0
            splits = {k: ((X - mu) / sd, y) for k, (X, y) in splits.items()}
        self.n_out = 10 if d.name == "digits" else d.n_classes
        self.d_in = Xtr.shape[1]
        xp = B.xp
        self.dev = {k: (xp.asarray(X.astype(t.dtype)), xp.asarray(y)) for k, (X, y) in splits.items()}
        self.n_train = len(Xtr)
        self.batch_size, self.seed, self.tail = t.batch_size, t.seed, d.tail
        self.rank, self.world = rank, world
        if self.batch_size > self.n_train:
            raise ConfigError(f"train.batch_size: {self.batch_size} is larger than the training split "
                              f"({self.n_train} samples)")
        self.lo, self.hi = rank_bounds(self.batch_size, rank, world)
        self.steps_per_epoch = len(epoch_order(self.n_train, self.batch_size, 0, 0, self.tail))
        self._order_epoch, self._order = None, None
        self._xb = xp.empty((self.hi - self.lo, self.d_in), dtype=t.dtype)
        self._yb = xp.empty(self.hi - self.lo, dtype=np.int64)
        self.eval_batch = t.eval_batch
        self.name = d.name if d.name != "mnist" else f"IDX files in {d.path}"

    def batch(self, epoch, i):
        """Rank-local (x, targets) of global step i of `epoch`; normaliser = global batch size."""
        if self._order_epoch != epoch:
            order = epoch_order(self.n_train, self.batch_size, self.seed, epoch, self.tail)
            self._order = B.xp.asarray(order[:, self.lo:self.hi])
            self._order_epoch = epoch
        X, y = self.dev["train"]
        idx = self._order[i]
        B.take_into(X, idx, self._xb, axis=0)
        B.take_into(y, idx, self._yb, axis=0)
        return self._xb, self._yb, self.batch_size

    def items_per_step(self):
        return self.batch_size

    def describe(self):
        n = {k: len(y) for k, (_, y) in self.dev.items()}
        return (f"{self.name}: {n['train']:,} train / {n['val']:,} val / {n['test']:,} test rows, "
                f"{self.d_in} features, {self.n_out} classes")

    def evaluate(self, model, split, comm):
        """Mean loss and accuracy over `split`, each rank scoring its own contiguous part."""
        X, y = self.dev[split]
        n = len(y)
        if n == 0:
            return {}
        lo, hi = rank_bounds(n, comm.rank, comm.size)
        # summed where the model's numbers live (device scalars on a GPU), read back once
        sums = B.xp.zeros(2)                                   # loss, correct
        for s in range(lo, hi, self.eval_batch):
            e = min(hi, s + self.eval_batch)
            loss, correct = model.loss(X[s:e], y[s:e], 1.0)
            sums[0] += loss
            sums[1] += correct
        tot = np.append(B.to_numpy(sums), hi - lo)
        comm.all_reduce_sum_(tot, f"{split} evaluation")
        return {"loss": tot[0] / tot[2], "accuracy": tot[1] / tot[2]}
