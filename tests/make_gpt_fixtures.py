"""The GPT's torch reference (torch.nn.functional, written independently of ddp_scratch) and the
script that commits its values as tests/fixtures/gpt_reference.npz, so machines without torch
still check the hand-written gradients:   python tests/make_gpt_fixtures.py

The reference takes parameters in ddp_scratch's layout (weights (D_in, D_out), q|k|v side by side
in attn.w) by name, so the fixture stores the flat parameter vector and its layout."""
import json
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "fixtures", "gpt_reference.npz")
CONFIG = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=12, bias=True)


def torch_ln(torch, x, P, name):
    F = torch.nn.functional
    return F.layer_norm(x, (x.shape[-1],), P[name + ".w"], P.get(name + ".b"), eps=1e-5)


def torch_attention(torch, h, P, n, H, drop=None):
    """Causal self-attention of the block prefix n on h (B,T,C), nanoGPT style."""
    Bn, T, C = h.shape
    qkv = h @ P[n + "attn.w"] + (P[n + "attn.b"] if n + "attn.b" in P else 0)
    q, k, v = (z.view(Bn, T, H, C // H).transpose(1, 2) for z in qkv.split(C, dim=2))
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // H))
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    att = torch.softmax(att.masked_fill(~causal, float("-inf")), dim=-1)
    if drop is not None:
        att = att * drop
    return (att @ v).transpose(1, 2).reshape(Bn, T, C)


def torch_mlp(torch, h, P, n):
    F = torch.nn.functional
    b = lambda k: P[n + k] if n + k in P else 0   # noqa: E731
    return F.gelu(h @ P[n + "fc.w"] + b("fc.b"), approximate="tanh") @ P[n + "fc2.w"] + b("fc2.b")


def torch_block(torch, x, P, n, H):
    a = torch_attention(torch, torch_ln(torch, x, P, n + "ln1"), P, n, H)
    x = x + a @ P[n + "proj.w"] + (P[n + "proj.b"] if n + "proj.b" in P else 0)
    return x + torch_mlp(torch, torch_ln(torch, x, P, n + "ln2"), P, n)


def torch_gpt_loss(torch, P, idx, targets, n_layer, n_head, scale=1.0, head=None):
    """Sum of token cross-entropies times scale; `head` (V,C) unties the output head from wte."""
    F = torch.nn.functional
    Bn, T = idx.shape
    x = P["wte"][idx] + P["wpe"][:T]
    for i in range(n_layer):
        x = torch_block(torch, x, P, f"h{i}.", n_head)
    x = torch_ln(torch, x, P, "lnf")
    logits = x @ (P["wte"] if head is None else head).T
    V = logits.shape[-1]
    return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-1, reduction="sum") * scale


def torch_params(torch, model):
    """ddp_scratch parameters as float64 leaf tensors, by name."""
    from ddp_scratch import backend as B     # the parameters may live on a device: a host copy
    return {p.name: torch.tensor(np.asarray(B.to_numpy(p.data), dtype=np.float64), requires_grad=True)
            for p in model.space.plist}


def make_gpt_fixture(path=FIXTURE):
    import torch
    torch.set_default_dtype(torch.float64)
    sys.path.insert(0, os.path.dirname(HERE))
    from ddp_scratch.nn.gpt import GPT
    m = GPT(dtype="float64", seed=3, **CONFIG)
    rng = np.random.default_rng(7)
    # randomise the LayerNorm gains/biases too, so their gradients are not checked only at 1 and 0
    m.space.params[...] = rng.normal(0, 0.3, m.space.n_params)
    idx = rng.integers(0, CONFIG["vocab_size"], (3, CONFIG["block_size"]))
    tgt = rng.integers(0, CONFIG["vocab_size"], (3, CONFIG["block_size"]))
    tgt[0, :3] = -1                                  # ignored positions
    P = torch_params(torch, m)
    scale = 1.0 / int((tgt >= 0).sum())
    loss = torch_gpt_loss(torch, P, torch.tensor(idx), torch.tensor(tgt), CONFIG["n_layer"], CONFIG["n_head"], scale)
    loss.backward()
    grads = np.concatenate([P[p.name].grad.numpy().ravel() for p in m.space.plist])
    np.savez(path, params=np.asarray(m.space.params), idx=idx, targets=tgt, scale=scale,
             loss=loss.item(), grads=grads, config=json.dumps(CONFIG),
             layout=json.dumps(m.space.layout()), torch_version=torch.__version__)
    return path


if __name__ == "__main__":
    print("wrote", make_gpt_fixture())
