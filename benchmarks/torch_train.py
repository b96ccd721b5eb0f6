"""The peer of `launch.py train` in the end-to-end benchmark (bench_e2e.py): a plain PyTorch
training script, as a student would write it, doing the same work from the same config file.

Same data (the config's IDX files read by the same reader, the same seeded train/val split and
the same scalar normalisation), the same MLP shape, loss, optimizer (AdamW or SGD), learning-rate
schedule (warm-up then constant or cosine, per step), global batch (split across ranks as
DistributedSampler would), evaluation cadence (every eval_every steps or once per epoch, and the
test split at the end), thread count, and a checkpoint and a summary written at the end. Ranks:
run it under mpiexec; torch.distributed (gloo) with DistributedDataParallel.

    python benchmarks/torch_train.py CONFIG --out DIR [--set k=v ...]
"""
import argparse
import json
import os
import sys
import time

T_START = time.perf_counter()
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402  (sets nothing before numpy/torch: threads are set below)


def parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--out", required=True)
    ap.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    return ap.parse_args()


def world():
    """(rank, size, comm) from MPI when started by mpiexec with more than one process."""
    if not any(v in os.environ for v in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")):
        return 0, 1, None
    from mpi4py import MPI
    c = MPI.COMM_WORLD
    return c.Get_rank(), c.Get_size(), c


def main():
    a = parse()
    rank, size, mpi_comm = world()
    from ddp_scratch.config import load_config
    cfg = load_config(a.config, a.overrides)
    t, d, o = cfg.train, cfg.data, cfg.optim
    if cfg.model.name != "mlp" or d.name != "mnist" or o.name not in ("adamw", "sgd"):
        sys.exit("torch_train.py: expected model mlp, data mnist and optim adamw or sgd")
    threads = t.threads or max(1, (os.cpu_count() or 1) // size)
    common.set_threads(threads)
    import numpy as np
    from ddp_scratch.data.images import _split, load_mnist
    from ddp_scratch.nn.optim import lr_at
    if size > 1:
        torch = common.torch_ddp_init(_Shim(mpi_comm), threads)
    else:
        import torch
        torch.set_num_threads(threads)
    import torch.nn as nn
    import torch.nn.functional as F
    dist = torch.distributed
    torch.manual_seed(t.seed)

    (X, y), (Xte, yte) = load_mnist(d.path, n_classes=d.n_classes)
    va, tr = _split(len(X), [d.val_fraction], d.seed)
    mu, sd = float(X[tr].mean()), float(X[tr].std()) or 1.0
    dtype = getattr(torch, t.dtype)
    torch.set_default_dtype(dtype)
    splits = {k: (torch.from_numpy(((Xs - mu) / sd).astype(t.dtype)), torch.from_numpy(ys))
              for k, (Xs, ys) in {"train": (X[tr], y[tr]), "val": (X[va], y[va]), "test": (Xte, yte)}.items()}
    Xtr, ytr = splits["train"]

    widths = [Xtr.shape[1], *cfg.model.hidden, d.n_classes]
    layers = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    net = nn.Sequential(*layers)
    model = nn.parallel.DistributedDataParallel(net) if size > 1 else net
    if o.name == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                weight_decay=o.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)

    n, B = len(ytr), t.batch_size
    spe = n // B                                   # data.tail: drop (the partial last batch)
    total = spe * t.epochs if not t.max_steps else min(spe * t.epochs, t.max_steps)
    lo, hi = B * rank // size, B * (rank + 1) // size

    def evaluate(split):
        Xs, ys = splits[split]
        a_, b_ = len(ys) * rank // size, len(ys) * (rank + 1) // size
        loss = correct = 0.0
        with torch.no_grad():
            for s in range(a_, b_, t.eval_batch):
                out = net(Xs[s:min(b_, s + t.eval_batch)])
                tgt = ys[s:min(b_, s + t.eval_batch)]
                loss += float(F.cross_entropy(out, tgt, reduction="sum"))
                correct += float((out.argmax(1) == tgt).sum())
        tot = torch.tensor([loss, correct, float(b_ - a_)], dtype=torch.float64)
        if size > 1:
            dist.all_reduce(tot)
        return {"loss": float(tot[0] / tot[2]), "accuracy": float(tot[1] / tot[2])}

    history, step, train_s = [], 0, 0.0        # train_s: the steps alone, as the trainer's wall_s
    gen = torch.Generator().manual_seed(t.seed)
    for epoch in range(t.epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(spe):
            if step >= total:
                break
            t0 = time.perf_counter()
            idx = order[i * B + lo:i * B + hi]
            for g in opt.param_groups:
                g["lr"] = lr_at(o, step, total)
            opt.zero_grad(set_to_none=True)
            # the global mean: this rank's sum over the global batch; DDP averages over ranks
            loss = F.cross_entropy(model(Xtr[idx]), ytr[idx], reduction="sum") * (size / B)
            loss.backward()
            opt.step()
            train_s += time.perf_counter() - t0
            step += 1
            if (t.eval_every and step % t.eval_every == 0) or (not t.eval_every and i == spe - 1) or step == total:
                history.append({"step": step, **{f"val_{k}": v for k, v in evaluate("val").items()}})
    test = evaluate("test")
    if rank == 0:
        os.makedirs(a.out, exist_ok=True)
        torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "step": step},
                   os.path.join(a.out, "checkpoint.pt"))
        summary = {"steps": step, "train_s": train_s, "test_accuracy": test["accuracy"], "history": history,
                   "threads": threads, "world_size": size, "wall_s": time.perf_counter() - T_START}
        with open(os.path.join(a.out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        print(f"torch: {step} steps in {train_s:.2f} s, test accuracy {test['accuracy']:.4f}", flush=True)
    if size > 1:
        dist.destroy_process_group()


class _Shim:
    """What common.torch_ddp_init reads of ddp_scratch's Comm, from a bare mpi4py communicator."""

    def __init__(self, comm):
        from mpi4py import MPI
        self.MPI, self.comm, self.rank, self.size = MPI, comm, comm.Get_rank(), comm.Get_size()


if __name__ == "__main__":
    main()
