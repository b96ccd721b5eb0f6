"""Models by name: the one place a config's `model.name` becomes a model object (a built-in, or a
plug-in named `module:Class` / `file.py:Class`, nn/plugins.py), and the memory a model will need,
known before anything is allocated."""
from ..errors import ConfigError
from .flat import N_EXTRAS
from .optim import optimizer_arrays
from .plugins import build_model as build_plugin_model, is_plugin


def build_model(cfg, d_in, n_out, seed, build=True):
    """cfg: the whole Config. d_in/n_out come from the data (features, classes or vocab).
    build=False declares the parameters without allocating them (for memory_estimate)."""
    m = cfg.model
    if m.name == "mlp":
        from .mlp import MLP
        return MLP(d_in, n_out, m.hidden, m.activation, m.init, cfg.train.dtype, seed, cfg.train.loss, build)
    if m.name == "gpt":
        from .gpt import GPT
        return GPT.from_config(cfg, n_out, seed, build)
    if is_plugin(m.name):             # a user's model: mypkg.models:ResMLP or path/file.py:ResMLP
        return build_plugin_model(m.name, m, d_in, n_out, cfg.train.dtype, seed, build)
    raise ConfigError(f"model.name: expected mlp or gpt, got {m.name!r}")


def memory_estimate(cfg, d_in, n_out, rows, eval_rows, shards=1):
    """Bytes per rank, by part, of a model trained on `rows` per step and evaluated `eval_rows` at
    a time: parameters, gradients, optimizer state (+ its update scratch), activations and scratch
    of the training batch and of the evaluation batch. A lower bound: NumPy temporaries aside.
    shards: ranks the optimizer state is split over (optim.zero: 1), each with a gradient slice."""
    model = build_model(cfg, d_in, n_out, 0, build=False)
    P, it = model.space.n_params, model.space.itemsize
    return {"params": P * it, "grads": (P + N_EXTRAS) * it,
            "optimizer": (optimizer_arrays(cfg.optim) + 1 + (shards > 1)) * -(-P // shards) * it,
            "activations": model.activation_bytes(rows) + model.activation_bytes(eval_rows)}
