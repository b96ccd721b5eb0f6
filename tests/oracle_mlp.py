"""The PyTorch side of the MLP / optimizer oracle tests, shared by the live tests and by
make_fixtures.py (which stores its answers so machines without torch still check against them)."""
import numpy as np

ACTS = ["relu", "leaky_relu", "sigmoid", "tanh", "elu", "gelu"]
OPTIMS = {
    "sgd": dict(name="sgd", lr=0.1),
    "sgd_momentum_wd": dict(name="sgd", lr=0.05, momentum=0.9, weight_decay=0.01),
    "sgd_nesterov": dict(name="sgd", lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.001),
    "sgd_maximize": dict(name="sgd", lr=0.05, momentum=0.5, maximize=True),
    "adam": dict(name="adam", lr=0.01, weight_decay=0.01),
    "adam_amsgrad": dict(name="adam", lr=0.01, amsgrad=True, betas=[0.8, 0.99]),
    "adamw": dict(name="adamw", lr=0.01, weight_decay=0.1),
    "adamw_amsgrad_max": dict(name="adamw", lr=0.01, weight_decay=0.05, amsgrad=True, maximize=True),
    "rmsprop": dict(name="rmsprop", lr=0.01, alpha=0.9, weight_decay=0.01),
    "rmsprop_momentum_centered": dict(name="rmsprop", lr=0.005, momentum=0.9, centered=True),
}


def mlp_inputs(seed=0, n=6, d_in=5, hidden=(7, 6), n_out=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d_in))
    t = rng.integers(0, n_out, n)
    return x, t, [d_in, *hidden, n_out]


def torch_mlp_grads(torch, params, x, t, dims, act, loss="xent"):
    """Loss and flat gradient of the same MLP in torch.nn.functional (weights stored (in, out))."""
    import torch.nn.functional as F
    fn = {"relu": F.relu, "leaky_relu": lambda z: F.leaky_relu(z, 0.01), "sigmoid": torch.sigmoid,
          "tanh": torch.tanh, "elu": F.elu, "gelu": lambda z: F.gelu(z, approximate="tanh")}[act]
    p = torch.tensor(params, requires_grad=True)
    off, h = 0, torch.tensor(x)
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        W = p[off:off + a * b].view(a, b)
        off += a * b
        bias = p[off:off + b]
        off += b
        h = h @ W + bias
        if i < len(dims) - 2:
            h = fn(h)
    tt = torch.tensor(t)
    if loss == "xent":
        L = F.cross_entropy(h, tt)
    else:
        L = F.mse_loss(h, F.one_hot(tt, dims[-1]).double())
    L.backward()
    return float(L.detach()), p.grad.numpy().copy()


def torch_optim_trajectory(torch, cfg, p0, grads):
    """Parameters after each step of torch.optim on the given gradient sequence."""
    p = torch.nn.Parameter(torch.tensor(p0))
    kw = dict(lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 0.0), maximize=cfg.get("maximize", False))
    name = cfg["name"]
    if name == "sgd":
        opt = torch.optim.SGD([p], momentum=cfg.get("momentum", 0.0), nesterov=cfg.get("nesterov", False), **kw)
    elif name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        opt = cls([p], betas=tuple(cfg.get("betas", (0.9, 0.999))), eps=cfg.get("eps", 1e-8),
                  amsgrad=cfg.get("amsgrad", False), **kw)
    else:
        opt = torch.optim.RMSprop([p], alpha=cfg.get("alpha", 0.99), eps=cfg.get("eps", 1e-8),
                                  momentum=cfg.get("momentum", 0.0), centered=cfg.get("centered", False), **kw)
    out = []
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
        out.append(p.detach().numpy().copy())
    return np.array(out)


def optim_grads(n=40, steps=6, seed=3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=n), rng.normal(size=(steps, n))
