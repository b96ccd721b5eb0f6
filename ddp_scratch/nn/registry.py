"""Models by name: the one place a config's `model.name` becomes a model object."""
from ..errors import ConfigError


def build_model(cfg, d_in, n_out, seed):
    """cfg: the whole Config. d_in/n_out come from the data (features, classes or vocab)."""
    m = cfg.model
    if m.name == "mlp":
        from .mlp import MLP
        return MLP(d_in, n_out, m.hidden, m.activation, m.init, cfg.train.dtype, seed, cfg.train.loss)
    if m.name == "gpt":
        from .gpt import GPT
        return GPT.from_config(cfg, n_out, seed)
    raise ConfigError(f"model.name: expected mlp or gpt, got {m.name!r}")
