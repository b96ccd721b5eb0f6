"""`launch.py sample CHECKPOINT`: continue a prompt with a trained GPT, one character at a time.

The checkpoint's metadata holds the whole config (meta["config"]) and, from the trainer's hook,
the vocabulary (meta["vocab"]: the tokenizer's characters, id = position). Checkpoints without it
rebuild the tokenizer from the config (the addition alphabet, or data.path read again).
Sampling draws from one generator seeded by --seed, so a seed always gives the same text.
"""
import sys

import numpy as np

from .. import backend as B
from ..config import config_from_dict
from ..errors import CheckpointError, ConfigError, DataError, UserError
from . import checkpoint as ckpt


def load_tokenizer(meta, arrays, cfg, path):
    from ..data.text import ADDITION_CHARS, CharTokenizer, read_text
    vocab = meta.get("vocab")
    if vocab is None and "vocab" in arrays:      # code points, if stored as an array
        codes = arrays["vocab"].ravel().tolist()
        vocab = "".join(map(chr, codes)) if all(isinstance(c, int) and 0 <= c < 0x110000 for c in codes) else codes
    if vocab is not None:
        if not isinstance(vocab, str) or not vocab or len(set(vocab)) != len(vocab):
            raise CheckpointError(f"checkpoint {path}: its vocabulary is {vocab!r:.40}, expected a non-empty "
                                  "string of distinct characters")
        return CharTokenizer(vocab)
    if cfg.data.name == "addition":
        return CharTokenizer(ADDITION_CHARS)
    try:
        return CharTokenizer.from_text(read_text(cfg.data.path))
    except DataError as e:
        raise CheckpointError(f"checkpoint {path} stores no vocabulary, and the training text that "
                              f"would rebuild it cannot be read: {e}") from None


def load_model(path):
    """-> (model, tokenizer, cfg) from a checkpoint written by a gpt training run."""
    from ..nn.registry import memory_estimate
    from .preflight import check_memory
    arrays, meta = ckpt.load(path)
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"checkpoint {path} holds no config to rebuild the model from")
    try:
        cfg = config_from_dict(meta["config"])
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path}: the config stored in it is not valid ({e})") from None
    if cfg.model.name != "gpt":
        raise UserError(f"sample: checkpoint {path} holds a {cfg.model.name!r} model; sampling needs a gpt")
    tok = load_tokenizer(meta, arrays, cfg, path)
    from ..nn.gpt import GPT
    check_memory(f"the model in {path}", memory_estimate(cfg, len(tok), len(tok), 1, 1))
    model = GPT.from_config(cfg, len(tok), cfg.train.seed)
    layout = model.space.layout()
    if arrays["params"].shape != model.space.params.shape or meta.get("layout", layout) != layout:
        raise CheckpointError(f"checkpoint {path}: its parameters do not fit the model its config describes "
                              f"(vocabulary of {len(tok)} characters)")
    ckpt.check_array(arrays["params"], path, "params", model.space.params.shape, model.space.params.dtype)
    model.space.params[...] = B.xp.asarray(arrays["params"])
    return model, tok, cfg


def stream(model, ids, n_tokens, temperature=1.0, top_k=0, seed=0):
    """Token ids that continue `ids`, one at a time: greedy when temperature is 0, else sampled
    from the temperature-scaled softmax over the top_k most likely (all when top_k is 0)."""
    rng = np.random.default_rng(seed)
    seq = [int(i) for i in ids]
    for _ in range(n_tokens):
        ctx = np.asarray(seq[-model.Tmax:], dtype=np.int64)[None]            # (1,T) cropped
        logits = B.to_numpy(model.predict(B.xp.asarray(ctx))[0, -1]).astype(np.float64)   # (V,)
        if temperature == 0:
            nxt = int(np.argmax(logits))
        else:
            if 0 < top_k < len(logits):
                logits[logits < np.sort(logits)[-top_k]] = -np.inf
            with np.errstate(over="ignore", under="ignore"):   # a tiny temperature is argmax, not NaN
                p = np.exp((logits - logits.max()) / temperature)
            nxt = int(rng.choice(len(p), p=p / p.sum()))
        seq.append(nxt)
        yield nxt


def generate(model, ids, n_tokens, temperature=1.0, top_k=0, seed=0):
    return list(stream(model, ids, n_tokens, temperature, top_k, seed))


def run_sample(a):
    model, tok, cfg = load_model(a.checkpoint)
    prompt = a.prompt if a.prompt is not None else ("\n" if "\n" in tok.stoi else tok.chars[0])
    if not prompt:
        raise UserError("sample --prompt: empty; give at least one character to continue")
    ids = tok.encode(prompt, what="sample --prompt")
    sys.stdout.write(prompt)
    sys.stdout.flush()
    last = prompt[-1]
    for i in stream(model, ids, a.tokens, a.temperature, a.top_k, a.seed):   # shown as it is made
        last = tok.chars[i]
        sys.stdout.write(last)
        sys.stdout.flush()
    if last != "\n":
        sys.stdout.write("\n")
    sys.stdout.flush()
    return 0
