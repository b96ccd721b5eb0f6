"""A user's model or optimizer named in the config (`module:Class` or `file.py:Class`): it is
found, checked against the interface, given its typed options, and every way it can be wrong is
one line naming what is missing (and the file and line of a bad option). Arrays on the active
array module (tests/nn/devices.py)."""
import os
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest

from conftest import ROOT, run_launch
from devices import dev, host
from ddp_scratch.config import load_config
from ddp_scratch.errors import ConfigError
from ddp_scratch.nn import plugins
from ddp_scratch.nn.optim import build_optimizer, optimizer_arrays
from ddp_scratch.nn.registry import build_model, memory_estimate

DIGITS = os.path.join(ROOT, "experiments", "mlp_digits.yaml")
BASE = "base.yaml"           # written by plugin_dir: digits data, no key of a built-in model or optimizer
RESMLP = "examples/resmlp/resmlp.py:ResMLP"

TINY = '''
from dataclasses import dataclass
from ddp_scratch.config import F
from ddp_scratch.nn import ops
from ddp_scratch.nn.flat import ParamSpace
from ddp_scratch.nn.layers import Linear


@dataclass
class Options:
    width: int = F(8, min=1)
    act: str = F("relu", choices=["relu", "tanh"])


class Tiny:
    Options = Options

    def __init__(self, d_in, n_out, options, dtype="float32", seed=0, build=True):
        self.space = ParamSpace(dtype)
        self.fc = Linear(self.space, "fc", d_in, n_out, need_dx=False)
        self.options = options
        if build:
            self.space.build(seed)

    def predict(self, x):
        return self.fc.forward(x)

    def loss(self, x, t, scale):
        loss, correct, self.p = ops.softmax_xent_forward(self.predict(x), t, scale)
        self.t, self.scale = t, scale
        return loss, correct

    def backward(self):
        self.fc.backward(ops.softmax_xent_backward(self.p, self.t, self.scale))

    def flops_per_step(self, n):
        return 4 * n * self.fc.W.size

    def activation_bytes(self, rows):
        return 2 * rows * self.fc.W.shape[1] * self.space.itemsize
'''


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A folder holding tiny.py (a valid model) as the current directory; plug-ins loaded by a
    test are forgotten after it."""
    (tmp_path / "tiny.py").write_text(TINY)
    (tmp_path / BASE).write_text("data:\n  name: digits\ntrain:\n  batch_size: 16\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(plugins, "_loaded", {})
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("ddp_plugin_") or name in ("tiny", "broken", "helper", "pkg", "pkg.models"):
            del sys.modules[name]


def write(d, name, text):
    p = d / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text))
    return str(p)


def cfg_file(d, text):
    return write(d, "c.yaml", text)


@pytest.mark.parametrize("ref", ["tiny.py:Tiny", "tiny:Tiny", "./tiny.py:Tiny"])
def test_a_model_by_file_or_module_with_its_typed_options(plugin_dir, ref):
    cfg = load_config(BASE, [f"model.name={ref}", "model.options.width=1e1", "model.options.act=tanh"])
    m = build_model(cfg, 64, 10, 0)
    assert type(m).__name__ == "Tiny" and m.options.width == 10 and m.options.act == "tanh"
    assert cfg.model.options == {"width": 10, "act": "tanh"}      # typed, recorded in the summary/checkpoint
    assert cfg.to_dict()["model"]["options"] == {"width": 10, "act": "tanh"}
    assert m.space.params.shape == (64 * 10 + 10,)


def test_options_default_and_the_fingerprint_keeps_old_checkpoints(plugin_dir):
    cfg = load_config(BASE, ["model.name=tiny.py:Tiny"])
    build_model(cfg, 64, 10, 0)
    assert cfg.model.options == {"width": 8, "act": "relu"}
    assert "options" in cfg.fingerprint()["model"]
    plain = load_config(DIGITS)
    assert "options" not in plain.fingerprint()["model"] and "options" not in plain.fingerprint()["optim"]


@pytest.mark.parametrize("line, message", [
    ("    widht: 3", "line 5: unknown config key 'model.options.widht' (did you mean 'width'?); valid keys here: width, act"),
    ("    width: abc", "line 5: model.options.width: expected an integer, got 'abc'"),
    ("    width: 0", "line 5: model.options.width: expected a value >= 1, got 0"),
    ("    act: gelu", "line 5: model.options.act: expected one of relu, tanh, got 'gelu' (did you mean 'relu'?)"),
    ("    width: [3]", "line 5: model.options.width: expected an integer, got a list"),
])
def test_a_bad_option_is_one_line_with_file_and_line(plugin_dir, line, message):
    path = cfg_file(plugin_dir, f"model:\n  name: tiny.py:Tiny\n  options:\n    # the options\n{line}\n")
    cfg = load_config(path)
    with pytest.raises(ConfigError) as e:
        build_model(cfg, 64, 10, 0)
    print(e.value)
    assert str(e.value) == f"config file {path}, {message}"


def test_options_given_to_a_set_are_named_by_it(plugin_dir):
    cfg = load_config(BASE, ["model.name=tiny:Tiny", "model.options.width=-1"])
    with pytest.raises(ConfigError, match=r"^--set 'model.options.width=-1': model.options.width: expected a value >= 1"):
        build_model(cfg, 64, 10, 0)


@pytest.mark.parametrize("files, ref, message", [
    ({}, "nothere:Model", "model.name: no module named 'nothere' (a module is looked up on the Python path"),
    ({}, "nothere.py:Model", "model.name: nothere.py not found (a file is taken relative to the current directory"),
    ({}, "tiny.py:Tiyn", "model.name: tiny.py has no attribute 'Tiyn' (it defines Options, Tiny)"),
    ({"broken.py": "def f(:\n"}, "broken.py:M", "model.name: importing broken.py failed: SyntaxError: invalid syntax (broken.py, line 1)"),
    ({"broken.py": "x = 1\ny = undefined_name\n"}, "broken.py:M",
     "model.name: importing broken.py failed: NameError: name 'undefined_name' is not defined (broken.py, line 2)"),
    ({"pkg/models.py": "import not_installed_dependency\n"}, "pkg.models:M",
     "model.name: importing pkg.models failed: ModuleNotFoundError: No module named 'not_installed_dependency' "
     "({plugin_dir}/pkg/models.py, line 1)"),                  # a module's file: by its absolute path
    ({"sub/broken.py": "def f(:\n"}, "sub/../sub/broken.py:M",    # the file named: as it was given
     "model.name: importing sub/../sub/broken.py failed: SyntaxError: invalid syntax (sub/../sub/broken.py, line 1)"),
    ({"broken.py": "import helper\n", "helper.py": "def g(:\n"}, "broken.py:M",   # a file it imports: absolute
     "model.name: importing broken.py failed: SyntaxError: invalid syntax ({plugin_dir}/helper.py, line 1)"),
    ({"broken.py": "M = 3\n"}, "broken.py:M", "model.name: broken.py:M is an int, expected a class (the model)"),
    ({"broken.py": "class M:\n    def loss(self, x, t, s): pass\n"}, "broken.py:M",
     "model.name: broken.py:M is not a model: it lacks backward(), predict(x), flops_per_step(n), "
     "activation_bytes(rows) (see docs/extending.md)"),
    ({"broken.py": "from tiny import Tiny\nclass M(Tiny):\n    def __init__(self, d_in, n_out):\n        pass\n"},
     "broken.py:M", "model.name: broken.py:M is called as M(d_in=, n_out=, options=, dtype=, seed=, build=), but "
     "got an unexpected keyword argument 'options'"),
    ({"broken.py": "from tiny import Tiny\nclass M(Tiny):\n    Options = dict\n"}, "broken.py:M",
     "model.name: broken.py:M.Options must be a dataclass"),
    ({"broken.py": "from tiny import Tiny\nclass M(Tiny):\n    def __init__(self, **kw):\n        pass\n"},
     "broken.py:M", "model.name: broken.py:M has no `space` (the ParamSpace its layers declare their parameters in"),
    ({"broken.py": "from tiny import Tiny\nclass M(Tiny):\n    def __init__(self, build, **kw):\n"
                   "        super().__init__(build=False, **kw)\n"}, "broken.py:M",
     "model.name: broken.py:M did not allocate its parameters: call self.space.build(seed) when build is true"),
])
def test_a_plugin_that_cannot_be_used_is_one_line_naming_what_is_missing(plugin_dir, files, ref, message):
    for name, text in files.items():
        write(plugin_dir, name, text)
    cfg = load_config(BASE, [f"model.name={ref}"])
    with pytest.raises(ConfigError) as e:
        build_model(cfg, 64, 10, 0)
    print(e.value)
    message = message.replace("{plugin_dir}", str(plugin_dir))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_declaring_a_plugin_model_allocates_nothing(plugin_dir):
    cfg = load_config(BASE, [f"model.name={os.path.join(ROOT, RESMLP)}", "model.options.width=256"])
    build_model(cfg, 64, 10, 0, build=False)         # imports out of the measurement
    tracemalloc.start()
    est = memory_estimate(cfg, 64, 10, rows=32, eval_rows=1024)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    built = build_model(cfg, 64, 10, 0)
    assert peak < 200_000, peak
    assert est["params"] == built.space.params.nbytes
    assert est["optimizer"] == 2 * built.space.params.nbytes          # sgd: momentum + update scratch


def test_a_plugin_that_allocates_when_declared_is_refused(plugin_dir):
    write(plugin_dir, "broken.py", "from tiny import Tiny\nclass M(Tiny):\n    def __init__(self, build, **kw):\n"
                                   "        super().__init__(build=True, **kw)\n")
    cfg = load_config(BASE, ["model.name=broken.py:M"])
    with pytest.raises(ConfigError, match="allocated its parameters although build=False"):
        memory_estimate(cfg, 64, 10, 8, 8)


@pytest.mark.parametrize("overrides, message", [
    (["model.name=tiny:Tiny"],
     "model.hidden: a key of the built-in models; the plug-in tiny:Tiny takes its own keys under model.options"),
    (["model.options.width=3"], "model.options: only a plug-in model (model.name: a plug-in as module:Attr or "
                                "path/to/file.py:Attr) takes options; mlp takes its keys directly under model:"),
    (["optim.name=tiny:Opt", "optim.momentum=0", "optim.nesterov=false", "optim.betas=[0.8,0.9]"],
     "optim.betas: a key of the built-in optims; the plug-in tiny:Opt takes its own keys under optim.options"),
    (["model.name='tiny:'"], "model.name: 'tiny:' is not a plug-in reference: expected a plug-in as module:Attr"),
    (["model.name=tiny:a-b"], "model.name: 'tiny:a-b' is not a plug-in reference"),
    (["model.name=mlpp"], "model.name: expected one of mlp, gpt, or a plug-in as module:Attr or path/to/file.py:Attr, "
                          "got 'mlpp' (did you mean 'mlp'?)"),
    (["model.options=3"], "model.options: expected a mapping of keys, got '3'"),
])
def test_config_refuses_keys_that_would_be_ignored(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(DIGITS, overrides)
    assert message in str(e.value), str(e.value)


def test_a_plugin_without_options_takes_none(plugin_dir):
    write(plugin_dir, "broken.py", "from tiny import Tiny\nclass M(Tiny):\n    Options = None\n")
    write(plugin_dir, "plain.py", "from tiny import Tiny\nclass M(Tiny):\n    pass\n")
    del_options = load_config(BASE, ["model.name=plain.py:M"])
    assert build_model(del_options, 64, 10, 0).options is not None        # inherits Tiny's Options
    write(plugin_dir, "bare.py", "import tiny\nclass M(tiny.Tiny):\n    pass\ndel tiny.Tiny.Options\n")
    with pytest.raises(ConfigError, match=r"model.options: bare.py:M declares no Options dataclass, so it takes no "
                                          r"options; got width"):
        build_model(load_config(BASE, ["model.name=bare.py:M", "model.options={width: 3}"]), 64, 10, 0)


# ----------------------------------------------------------------------------- optimizers

OPT = '''
from dataclasses import dataclass
from ddp_scratch import backend as B
from ddp_scratch.config import F
from ddp_scratch.nn.optim import Optimizer

@dataclass
class Options:
    mult: float = F(1.0, gt=0.0)

class SignSGD(Optimizer):
    Options = Options
    state_names = ()

    def __init__(self, space, lr, weight_decay=0.0, maximize=False, options=None):
        super().__init__(space, lr, weight_decay, maximize)
        self.mult = options.mult

    def step(self, lr=None):
        self._prep_grad(l2=True)
        self.t += 1
        B.xp.sign(self.g, out=self.tmp)
        self.tmp *= (self.lr if lr is None else lr) * self.mult
        self.p -= self.tmp
'''


def test_an_optimizer_plugin_steps_the_flat_buffers(plugin_dir):
    write(plugin_dir, "opt.py", OPT)
    cfg = load_config(BASE, ["optim.name=opt.py:SignSGD", "optim.lr=0.5", "optim.options.mult=2", "train.dtype=float64"])
    m = build_model(cfg, 4, 3, 0)
    opt = build_optimizer(cfg.optim, m.space)
    assert optimizer_arrays(cfg.optim) == 0 and opt.mult == 2.0
    before = host(m.space.params).copy()
    m.space.grads[:] = dev(np.linspace(-1, 1, m.space.grads.size))
    opt.step()
    np.testing.assert_allclose(host(m.space.params) - before, -1.0 * np.sign(np.linspace(-1, 1, m.space.grads.size)))


@pytest.mark.parametrize("text, message", [
    ("class O:\n    state_names = ()\n    def step(self, lr): pass\n",
     "optim.name: broken.py:O is not an optimizer: it lacks state_dict(), load_state_dict(d)"),
    ("from opt import SignSGD\nclass O(SignSGD):\n    state_names = None\n",
     "optim.name: broken.py:O lacks state_names, the class's tuple of names of its state arrays"),
    ("from opt import SignSGD\nclass O(SignSGD):\n    state_names = ('m',)\n    def __init__(self, space, **kw):\n"
     "        super().__init__(space, **kw)\n        self.m = self.p[:3].copy()\n",
     "optim.name: broken.py:O.state_dict()['m'] is (3,), expected a flat array the size of the parameter buffer"),
    ("from opt import SignSGD\nclass O(SignSGD):\n    def __init__(self, space, lr):\n        pass\n",
     "optim.name: broken.py:O is called as O(space, lr=, weight_decay=, maximize=, options=), but got an "
     "unexpected keyword argument 'weight_decay'"),
])
def test_an_optimizer_plugin_that_cannot_be_used(plugin_dir, text, message):
    write(plugin_dir, "opt.py", OPT)
    write(plugin_dir, "broken.py", text)
    cfg = load_config(BASE, ["optim.name=broken.py:O"])
    m = build_model(cfg, 4, 3, 0)
    with pytest.raises(ConfigError) as e:
        build_optimizer(cfg.optim, m.space)
    assert str(e.value).startswith(message), str(e.value)


# ----------------------------------------------------------------------------- the command line

def test_train_and_local_refuse_a_broken_plugin_in_one_line(tmp_path):
    (tmp_path / "m.py").write_text("class M:\n    pass\n")
    (tmp_path / BASE).write_text("data:\n  name: digits\n")
    for cmd in (["train"], ["local", "-n", "2"]):
        r = run_launch(*cmd, tmp_path / BASE, "--out", tmp_path / "o", "--set", f"model.name={tmp_path}/m.py:M", timeout=60)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().splitlines() == [
            f"error: model.name: {tmp_path}/m.py:M is not a model: it lacks loss(x, t, scale), backward(), predict(x), "
            "flops_per_step(n), activation_bytes(rows) (see docs/extending.md)"], r.stderr
    assert not (tmp_path / "o" / "checkpoint.npz").exists()


def test_a_backward_that_assigns_p_grad_is_warned_about_once(tmp_path):
    """A plug-in whose backward assigns p.grad itself (not through Param.acc*) trains on zero
    gradients (the fresh rule overwrites them): said once on stderr at the first step, naming the
    parameters; a model that writes all of them through acc* gets no such line."""
    src = TINY.replace("        self.fc.backward(ops.softmax_xent_backward(self.p, self.t, self.scale))",
                       "        d = ops.softmax_xent_backward(self.p, self.t, self.scale)\n"
                       "        self.fc.W.grad[...] = self.fc.x.T @ d\n")
    assert src != TINY
    (tmp_path / "assign.py").write_text(src)
    (tmp_path / "tiny.py").write_text(TINY)
    (tmp_path / BASE).write_text("data:\n  name: digits\ntrain:\n  batch_size: 16\n  max_steps: 4\n")
    for name, want in (("assign", ["fc.W", "fc.b"]), ("tiny", [])):
        r = run_launch("train", tmp_path / BASE, "--out", tmp_path / name, "--quiet",
                       "--set", f"model.name={tmp_path}/{name}.py:Tiny", timeout=60)
        assert r.returncode == 0, r.stderr
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("warning: no backward wrote")]
        print(lines)
        assert len(lines) == (1 if want else 0)
        if want:
            assert all(n in lines[0] for n in want) and "Param.acc" in lines[0] and "at step 1" in lines[0]
