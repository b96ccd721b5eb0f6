"""Character-level text tasks for the GPT: any UTF-8 file (data.name: text) or generated
addition problems (data.name: addition, embedded: no download, answers scored by exact match).

Training draws random windows of block_size: the GLOBAL batch of window starts comes from one
generator seeded by (train.seed, step), and rank r trains on rows rank_bounds(B, r, W) of it, so
N ranks see exactly the windows one rank would. Evaluation scores fixed windows, each rank its
contiguous part, summed with one small all-reduce.
"""
import math

import numpy as np

from .. import backend as B
from ..errors import ConfigError, DataError, UserError
from ..fsutil import read_regular_file
from .sharding import rank_bounds

# ----------------------------------------------------------------------------- tokenizer


class CharTokenizer:
    """Token id i is the i-th character of `chars` (sorted, so a text always maps the same way)."""

    def __init__(self, chars: str):
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text):
        return cls("".join(sorted(set(text))))

    def __len__(self):
        return len(self.chars)

    def encode(self, s, what="text"):
        bad = next((c for c in s if c not in self.stoi), None)
        if bad is not None:
            shown = repr(self.chars if len(self.chars) <= 40 else self.chars[:40] + "...")
            raise UserError(f"{what}: character {bad!r} (U+{ord(bad):04X}) is not in the vocabulary "
                            f"({len(self.chars)} characters: {shown})")
        return np.fromiter((self.stoi[c] for c in s), dtype=np.int64, count=len(s))

    def decode(self, ids):
        return "".join(self.chars[int(i)] for i in ids)


def read_text(path):
    raw = read_regular_file(path, "data.path", DataError)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"data.path {path}: not UTF-8 text (byte {e.start}: {e.reason})") from None


# ----------------------------------------------------------------------------- addition problems

ADDITION_CHARS = "\n+0123456789="   # sorted: the vocabulary does not depend on which problems
MAX_PROBLEMS = 200_000


def addition_splits(digits, seed, val_fraction, test_fraction):
    """Operand pairs (a, b) with up to `digits` digits, split by pair: the model is scored on sums
    it never trained on. All pairs when there are at most MAX_PROBLEMS, else a random sample."""
    rng = np.random.default_rng([seed, digits])
    n_all = 10 ** (2 * digits)
    ids = rng.permutation(n_all) if n_all <= MAX_PROBLEMS else rng.choice(n_all, MAX_PROBLEMS, replace=False)
    a, b = np.divmod(ids, 10 ** digits)
    n_te, n_va = int(round(len(ids) * test_fraction)), int(round(len(ids) * val_fraction))
    cut = {"test": slice(0, n_te), "val": slice(n_te, n_te + n_va), "train": slice(n_te + n_va, None)}
    return {k: (a[s], b[s]) for k, s in cut.items()}


def addition_text(a, b, digits):
    """'a+b=c\\n' per problem, zero-padded to fixed width ('07+45=052' for 2 digits, as minGPT's
    adder): every problem has one layout, so the score measures the arithmetic, not the parsing of
    operands of varying length. Also per character: is it a scored target (the answer digits and
    the closing newline), and where its problem starts."""
    lines = [f"{x:0{digits}d}+{y:0{digits}d}={x + y:0{digits + 1}d}\n" for x, y in zip(a.tolist(), b.tolist())]
    text = "".join(lines)
    scored = np.zeros(len(text), dtype=bool)
    start = np.empty(len(text), dtype=np.int64)
    pos = 0
    for line in lines:
        eq = line.index("=")
        scored[pos + eq + 1:pos + len(line)] = True
        start[pos:pos + len(line)] = pos
        pos += len(line)
    return text, scored, start


# ----------------------------------------------------------------------------- the task


class TextTask:
    """Random-window next-character prediction over one token stream per split.

    The trainer's task interface (see images.ClassificationTask); items are tokens. `vocab` holds
    the tokenizer's characters for the checkpoint, so `launch.py sample` needs no data file."""
    items = "tokens"

    def __init__(self, cfg, rank, world, tok, train_ids, evals, scored=None, start=None):
        t, T = cfg.train, cfg.model.block_size
        self.tok, self.vocab = tok, tok.chars
        self.d_in = self.n_out = len(tok)
        self.T, self.items_per_sample = T, T
        self.batch_size, self.seed = t.batch_size, t.seed
        if len(train_ids) < T + 2:
            raise DataError(f"data: the training split has {len(train_ids)} tokens, fewer than "
                            f"model.block_size + 2 ({T + 2}); use a longer text or a smaller block_size")
        self.ids, self.scored, self.start = train_ids, scored, start
        self.lo, self.hi = rank_bounds(self.batch_size, rank, world)
        self.steps_per_epoch = t.steps_per_epoch or max(1, len(train_ids) // (self.batch_size * T))
        self.evals = evals              # split -> (x (R,T), y (R,T), problem id (R,T) or None)
        self.eval_rows = max(1, self.hi - self.lo)
        self._ar = np.arange(T)
        self._xb = np.empty((self.hi - self.lo, T), dtype=np.int64)
        self._yb = np.empty((self.hi - self.lo, T), dtype=np.int64)
        self.last = {}
        d = cfg.data
        self.name = f"addition of {d.digits}-digit numbers" if d.name == "addition" else f"text {d.path}"

    def items_per_step(self):
        return self.batch_size * self.T

    def describe(self):
        evals = ", ".join(f"{len(x):,} {s} windows" for s, (x, _, _) in self.evals.items())
        train = f"{len(self.ids):,} train tokens"
        if self.scored is not None:                 # addition: problems, and tokens for the loss
            problems = int((self.ids == self.tok.stoi["\n"]).sum())
            train = f"{problems:,} train problems ({train})"
        return (f"{self.name}: {train}" + (f", {evals}" if evals else "")
                + f", vocabulary of {len(self.tok)} characters, context {self.T}")

    def batch(self, epoch, i):
        """Rank-local (x (b,T), targets (b,T), global number of scored targets) of one step."""
        step = epoch * self.steps_per_epoch + i
        starts = np.random.default_rng([self.seed, step]).integers(0, len(self.ids) - self.T, self.batch_size)
        idx = starts[:, None] + self._ar                       # (B,T) global batch
        np.take(self.ids, idx[self.lo:self.hi], out=self._xb)
        np.take(self.ids, idx[self.lo:self.hi] + 1, out=self._yb)
        n = idx.size
        if self.scored is not None:
            # a target counts when it is an answer character whose problem starts inside the window
            ok = self.scored[idx + 1] & (self.start[idx + 1] >= starts[:, None])
            n = int(ok.sum())
            self._yb[~ok[self.lo:self.hi]] = -1
        return B.xp.asarray(self._xb), B.xp.asarray(self._yb), max(1, n)

    def evaluate(self, model, split, comm):
        """Mean loss and accuracy per scored target (and exact match of whole answers) over `split`.
        A collective: every rank calls it, ranks with no rows still join the all-reduce."""
        if split not in self.evals:
            return {}
        X, Y, P = self.evals[split]
        lo, hi = rank_bounds(len(X), comm.rank, comm.size)
        xp = B.xp
        # Summed where the model's numbers live (device scalars on a GPU) and read back once at the
        # end, with the wrong answer characters (exact match is decided per problem on the host).
        sums = xp.zeros(2)                                     # loss, correct
        miss = xp.zeros(Y[lo:hi].shape, dtype=bool) if P is not None else None
        for s in range(lo, hi, self.eval_rows):
            e = min(hi, s + self.eval_rows)
            y = xp.asarray(Y[s:e])
            loss, correct = model.loss(xp.asarray(X[s:e]), y, 1.0, train=False)
            sums[0] += loss
            sums[1] += correct
            if P is not None:
                pred = model.logits.argmax(axis=1).reshape(y.shape)
                miss[s - lo:e - lo] = (pred != y) & (y >= 0)
        tot = np.zeros(5)                                      # loss, correct, targets, exact, problems
        tot[:2] = B.to_numpy(sums)
        tot[2] = (Y[lo:hi] >= 0).sum()
        if P is not None:
            pid = P[lo:hi]
            wrong = np.unique(pid[B.to_numpy(miss)])
            probs = np.unique(pid[pid >= 0])
            tot[3:] = (len(probs) - len(wrong), len(probs))
        comm.all_reduce_sum_(tot, f"{split} evaluation")
        out = {"loss": tot[0] / max(1.0, tot[2]), "accuracy": tot[1] / max(1.0, tot[2])}
        if P is not None:
            out["exact_match"] = tot[3] / max(1.0, tot[4])
        self.last[split] = out
        return out

    def extra_summary(self, model, comm):
        """No collective: the trainer has just evaluated val and test."""
        out = {}
        for split, keys in (("test", ("exact_match", "test_exact_match")), ("val", ("val_exact_match",))):
            if "exact_match" in self.last.get(split, {}):
                out.update(dict.fromkeys(keys, self.last[split]["exact_match"]))
        return out


def text_eval_windows(ids, T, max_rows):
    """Non-overlapping windows of a split (at most max_rows, evenly spread): x (R,T), y (R,T)."""
    n = (len(ids) - 1) // T
    if n < 1:
        return None
    rows = np.linspace(0, n - 1, min(n, max_rows)).round().astype(np.int64) if n > max_rows else np.arange(n)
    idx = rows[:, None] * T + np.arange(T)
    return ids[idx], ids[idx + 1], None


def addition_eval_rows(tok, a, b, digits, T):
    """Whole problems packed into rows that start with a newline (the context a problem has in
    training), padded with newlines that are not scored. Returns x, y (-1 = not scored), problem id.

    A problem counts as exactly matched when every answer character AND the closing newline is the
    argmax given the true prefix: exactly when greedy decoding after '=' writes the answer and stops."""
    text, scored, _ = addition_text(a, b, digits)
    ids = tok.encode(text)
    nl = tok.stoi["\n"]
    bounds = np.flatnonzero(ids == nl) + 1                    # end of each problem (exclusive)
    rows_x, rows_y, rows_p = [], [], []
    pos, p = 0, 0
    while p < len(bounds):
        row = [nl]
        tgt, pid = [-1], [-1]
        while p < len(bounds) and len(row) + bounds[p] - pos <= T + 1:
            seg = slice(pos, bounds[p])
            row += ids[seg].tolist()
            tgt += np.where(scored[seg], ids[seg], -1).tolist()
            pid += [p] * (bounds[p] - pos)
            pos, p = bounds[p], p + 1
        if len(row) == 1:          # not even one problem fits: stop rather than loop forever
            raise ConfigError(f"model.block_size: {T} is too short for {digits}-digit addition problems")
        pad = T + 1 - len(row)
        row, tgt, pid = row + [nl] * pad, tgt + [-1] * pad, pid + [-1] * pad
        rows_x.append(row[:-1])
        rows_y.append(tgt[1:])
        rows_p.append(pid[1:])
    return np.array(rows_x), np.array(rows_y), np.where(np.array(rows_y) >= 0, np.array(rows_p), -1)


def build_text_task(cfg, rank, world):
    d, T = cfg.data, cfg.model.block_size
    max_rows = cfg.train.eval_batch      # for text tasks: the most windows one evaluation scores
    if d.name == "addition":
        tok = CharTokenizer(ADDITION_CHARS)
        if T < 3 * d.digits + 4:
            raise ConfigError(f"model.block_size: {T} is too short for {d.digits}-digit addition problems "
                              f"(need at least {3 * d.digits + 4})")
        splits = addition_splits(d.digits, d.seed, d.val_fraction, d.test_fraction)
        text, scored, start = addition_text(*splits["train"], d.digits)
        evals = {}
        for s in ("val", "test"):
            a, b = splits[s]
            if len(a):
                evals[s] = addition_eval_rows(tok, a[:max_rows * 4], b[:max_rows * 4], d.digits, T)
        return TextTask(cfg, rank, world, tok, tok.encode(text), evals, scored, start)
    if d.name != "text":
        raise ConfigError(f"data.name: {d.name!r} is not a text task")
    text = read_text(d.path)
    if len(text) < T + 2:
        raise DataError(f"data.path {d.path}: {len(text)} characters, fewer than model.block_size + 2 ({T + 2}) "
                        "that one training window needs; use a longer text or a smaller model.block_size")
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    n_val = int(math.floor(len(ids) * d.val_fraction))
    train, val = ids[:len(ids) - n_val], ids[len(ids) - n_val:]
    evals = {}
    if n_val:
        w = text_eval_windows(val, T, max_rows)
        if w is None:
            raise DataError(f"data.path {d.path}: the validation split ({n_val} characters) is shorter than "
                            f"model.block_size + 1 ({T + 1}); raise data.val_fraction or use a longer text")
        evals["val"] = w
    return TextTask(cfg, rank, world, tok, train, evals)
