"""Regenerate tests/fixtures/mlp_reference.npz with torch (the external oracle):
    .venv/bin/python tests/make_fixtures.py
Tests compare the hand-written code against these stored values on machines without torch."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

from ddp_scratch.nn.mlp import MLP  # noqa: E402
from oracle_mlp import ACTS, OPTIMS, mlp_inputs, optim_grads, torch_mlp_grads, torch_optim_trajectory  # noqa: E402

torch.set_default_dtype(torch.float64)


def main():
    out = {}
    x, t, dims = mlp_inputs()
    for act in ACTS:
        for loss in ("xent", "mse"):
            m = MLP(dims[0], dims[-1], dims[1:-1], act, dtype="float64", seed=7, loss=loss)
            L, g = torch_mlp_grads(torch, m.space.params.copy(), x, t, dims, act, loss)
            out[f"mlp.{act}.{loss}.loss"] = np.array(L)
            out[f"mlp.{act}.{loss}.grad"] = g
    p0, grads = optim_grads()
    for name, cfg in OPTIMS.items():
        out[f"optim.{name}"] = torch_optim_trajectory(torch, cfg, p0, grads)
    out["torch_version"] = np.frombuffer(torch.__version__.encode(), dtype=np.uint8)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "mlp_reference.npz")
    np.savez(path, **out)
    print("wrote", path, len(out), "arrays")


if __name__ == "__main__":
    main()
