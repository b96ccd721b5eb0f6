"""Character-level text tasks: tokenizer, random windows sharded like one rank, the addition
problems and their scored targets, exact-match evaluation, clear errors for bad input, and a
GPT that learns a real text (validation loss well below the unigram entropy)."""
import json
import os
import time

import numpy as np
import pytest

from conftest import run_launch
from ddp_scratch.config import load_config
from ddp_scratch.errors import ConfigError, DataError, UserError
from ddp_scratch.data.text import (ADDITION_CHARS, CharTokenizer, addition_splits, addition_text,
                                  build_text_task)

TEXT = "/usr/share/common-licenses/GPL-3"


class World:
    """The part of Comm that evaluate() uses, for a world of one."""
    rank, size = 0, 1

    def all_reduce_sum_(self, buf, what=""):
        return buf


def text_file(tmp_path, text=None):
    p = tmp_path / "t.txt"
    p.write_text(text if text is not None else "".join(f"line {i}: the quick brown fox\n" for i in range(300)),
                 encoding="utf-8")
    return str(p)


def cfg_for(*overrides):
    return load_config(None, ["model.name=gpt", "model.block_size=16", "train.batch_size=8", "train.max_steps=5",
                              *overrides])


def test_tokenizer_round_trip_and_unknown_characters():
    tok = CharTokenizer.from_text("héllo wörld\n")
    assert tok.chars == "".join(sorted(set("héllo wörld\n")))
    ids = tok.encode("wörld héllo")
    assert tok.decode(ids) == "wörld héllo" and ids.dtype == np.int64
    with pytest.raises(UserError) as e:
        tok.encode("héllø", what="sample --prompt")
    msg = str(e.value)
    assert "\n" not in msg and "'ø'" in msg and "U+00F8" in msg and "sample --prompt" in msg


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_together_see_exactly_the_windows_of_one_rank(tmp_path, world):
    cfg = cfg_for("data.name=text", f"data.path={text_file(tmp_path)}", "train.batch_size=7")
    one = build_text_task(cfg, 0, 1)
    ranks = [build_text_task(cfg, r, world) for r in range(world)]
    for epoch, i in ((0, 0), (0, 3), (2, 1)):
        x1, y1, n1 = (a.copy() if hasattr(a, "copy") else a for a in one.batch(epoch, i))
        parts = [[a.copy() if hasattr(a, "copy") else a for a in t.batch(epoch, i)] for t in ranks]
        assert np.array_equal(np.concatenate([p[0] for p in parts]), x1)
        assert np.array_equal(np.concatenate([p[1] for p in parts]), y1)
        assert all(p[2] == n1 == 7 * 16 for p in parts)     # every rank normalises by the global count
        assert np.array_equal(x1[:, 1:], y1[:, :-1])         # targets are the next characters
    a, b = one.batch(0, 0)[0].copy(), one.batch(0, 1)[0].copy()
    assert not np.array_equal(a, b) and np.array_equal(one.batch(0, 0)[0], a)


def test_text_split_eval_windows_and_epoch_length(tmp_path):
    path = text_file(tmp_path)
    cfg = cfg_for("data.name=text", f"data.path={path}", "data.val_fraction=0.2", "train.eval_batch=5")
    task = build_text_task(cfg, 0, 1)
    text = open(path, encoding="utf-8").read()
    n_val = int(len(text) * 0.2)
    assert len(task.ids) == len(text) - n_val
    assert task.tok.decode(task.ids) == text[:len(text) - n_val]
    X, Y, P = task.evals["val"]
    assert X.shape == Y.shape == (5, 16) and P is None                 # at most eval_batch windows
    assert task.steps_per_epoch == (len(text) - n_val) // (8 * 16)
    assert task.vocab == "".join(sorted(set(text)))
    assert task.items_per_step() == 8 * 16 and task.items_per_sample == 16
    fixed = build_text_task(cfg_for("data.name=text", f"data.path={path}", "train.steps_per_epoch=9"), 0, 1)
    assert fixed.steps_per_epoch == 9


def test_addition_problems_are_fixed_width_and_only_answers_are_scored():
    a, b = np.array([7, 99, 10]), np.array([45, 99, 0])
    text, scored, start = addition_text(a, b, 2)
    assert text == "07+45=052\n99+99=198\n10+00=010\n"
    assert "".join(c for c, s in zip(text, scored) if s) == "052\n198\n010\n"
    assert start.tolist() == [0] * 10 + [10] * 10 + [20] * 10
    splits = addition_splits(2, 1234, 0.1, 0.2)
    pairs = {k: set(zip(*map(np.ndarray.tolist, v))) for k, v in splits.items()}
    assert sum(map(len, pairs.values())) == 10_000 and len(pairs["test"]) == 2000 and len(pairs["val"]) == 1000
    assert not (pairs["train"] & pairs["test"]) and not (pairs["train"] & pairs["val"])
    assert set("".join(addition_text(*splits["train"], 2)[0])) == set(ADDITION_CHARS)


@pytest.mark.parametrize("world", [1, 2])
def test_addition_targets_need_their_problem_inside_the_window(world):
    cfg = cfg_for("data.name=addition", "data.digits=2", "train.batch_size=6")
    one = build_text_task(cfg, 0, 1)
    x1, y1, n1 = one.batch(0, 2)
    x1, y1 = x1.copy(), y1.copy()
    starts = np.random.default_rng([cfg.train.seed, 2]).integers(0, len(one.ids) - 16, 6)
    eq = one.tok.stoi["="]
    assert n1 == int((y1 >= 0).sum()) > 0
    for p, row_x, row_y in zip(starts, x1, y1):
        assert np.array_equal(row_x, one.ids[p:p + 16])
        for t in range(16):
            j = p + 1 + t
            if row_y[t] >= 0:          # an answer character whose whole problem the window holds
                assert one.scored[j] and one.start[j] >= p and row_y[t] == one.ids[j]
                assert eq in row_x[one.start[j] - p:t + 1]
            else:
                assert not (one.scored[j] and one.start[j] >= p)
    parts = [build_text_task(cfg, r, world).batch(0, 2) for r in range(world)]
    assert np.array_equal(np.concatenate([p[1] for p in parts]), y1) and all(p[2] == n1 for p in parts)


class Oracle:
    """Predicts every scored target correctly (the logits are its one-hot), except `wrong`."""

    def __init__(self, V, wrong=()):
        self.V, self.wrong = V, set(wrong)

    def loss(self, x, y, scale, train=True):
        yf = y.reshape(-1)
        self.logits = np.zeros((yf.size, self.V))
        self.logits[np.arange(yf.size), np.maximum(yf, 0)] = 1.0
        for i in self.wrong:
            if i < yf.size and yf[i] >= 0:
                self.logits[i] = np.roll(self.logits[i], 1)
        self.wrong = set()          # only the first chunk's positions
        return 0.0, int(((self.logits.argmax(1) == yf) & (yf >= 0)).sum())


def test_exact_match_counts_whole_answers():
    task = build_text_task(cfg_for("data.name=addition", "model.block_size=32"), 0, 1)
    perfect = task.evaluate(Oracle(task.n_out), "test", World())
    assert perfect["exact_match"] == 1.0 and perfect["accuracy"] == 1.0
    X, Y, P = task.evals["test"]
    assert (P >= 0).sum() == (Y >= 0).sum() and len(np.unique(P[P >= 0])) == 2000
    first = int(np.flatnonzero(Y.reshape(-1) >= 0)[0])          # one wrong digit, one problem lost
    res = task.evaluate(Oracle(task.n_out, wrong=[first]), "test", World())
    assert res["exact_match"] == pytest.approx(1999 / 2000)
    assert task.extra_summary(None, World()) == {"exact_match": 1999 / 2000, "test_exact_match": 1999 / 2000}


def test_bad_input_gives_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_text_task(cfg_for("data.name=text", f"data.path={tmp_path / 'nope.txt'}"), 0, 1)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"abc\xff\xfe")
    with pytest.raises(DataError, match="not UTF-8"):
        build_text_task(cfg_for("data.name=text", f"data.path={bad}"), 0, 1)
    with pytest.raises(DataError, match="block_size"):
        build_text_task(cfg_for("data.name=text", f"data.path={text_file(tmp_path, 'tiny text')}"), 0, 1)
    with pytest.raises(DataError, match="validation split"):
        build_text_task(cfg_for("data.name=text", f"data.path={text_file(tmp_path, 'x' * 100)}",
                                "data.val_fraction=0.1"), 0, 1)
    with pytest.raises(ConfigError, match="too short"):
        build_text_task(cfg_for("data.name=addition", "data.digits=3", "model.block_size=12"), 0, 1)
    with pytest.raises(ConfigError, match="path"):
        load_config(None, ["model.name=gpt", "data.name=text"])


# ----------------------------------------------------------------------------- learning

def real_text(tmp_path):
    """GPL-3 on Debian machines, else the docstrings of a few stdlib modules: real English either way."""
    if os.path.exists(TEXT):
        return TEXT
    import argparse, collections, inspect, json as js, pathlib, subprocess, textwrap  # noqa: E401
    docs = [inspect.getdoc(o) or "" for mod in (argparse, collections, js, pathlib, subprocess, textwrap)
            for o in [mod, *vars(mod).values()] if callable(o) or inspect.ismodule(o)]
    p = tmp_path / "stdlib_docs.txt"
    p.write_text("\n\n".join(docs), encoding="utf-8")
    return str(p)


def test_gpt_char_level_validation_loss_well_below_unigram_entropy(tmp_path):
    path = real_text(tmp_path)
    text = open(path, encoding="utf-8").read()
    train = text[:len(text) - int(len(text) * 0.1)]
    freq = np.unique(list(train), return_counts=True)[1] / len(train)
    unigram = float(-(freq * np.log(freq)).sum())
    out = tmp_path / "gpt_char"
    t0 = time.perf_counter()
    sets = (f"data.path={path}", "model.n_layer=2", "model.d_model=64", "train.batch_size=32", "train.max_steps=400",
            "optim.lr=0.003", "optim.warmup_steps=20", "train.eval_every=200")
    r = run_launch("train", "experiments/gpt_char.yaml", "--out", out, "--quiet",
                   *[a for o in sets for a in ("--set", o)], timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(out / "summary.json") as f:
        s = json.load(f)
    print(f"char-level on {path}: val loss {s['val_loss']:.3f} nats vs unigram entropy {unigram:.3f} "
          f"after {s['steps']} steps, {time.perf_counter() - t0:.0f} s, {s['tokens_per_s']:.0f} tokens/s")
    assert s["val_loss"] < unigram - 0.6
    assert s["history"][-1]["val_loss"] < s["history"][0]["val_loss"]
