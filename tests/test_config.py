"""The config as people write it: numbers in every notation, values typed by their key (not by
YAML 1.1's guesses), duplicate keys and out-of-range values refused with the file, line and key;
and every YAML or --set value either loads or raises ConfigError (fuzzed)."""
import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT
from ddp_scratch.config import Config, load_config
from ddp_scratch.errors import ConfigError

DIGITS = os.path.join(ROOT, "experiments", "mlp_digits.yaml")


def cfg_file(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("text, value", [("1e-3", 1e-3), ("3e-3", 3e-3), ("1E+4", 1e4), (".5", 0.5), ("5.", 5.0),
                                         ("2", 2.0), ("1_000.5", 1000.5), ("-0.0", None)])
def test_numbers_in_every_notation_from_set_and_file(tmp_path, text, value):
    if value is None:      # lr must be > 0
        with pytest.raises(ConfigError, match="optim.lr: expected a value > 0"):
            load_config(DIGITS, [f"optim.lr={text}"])
        return
    assert load_config(DIGITS, [f"optim.lr={text}"]).optim.lr == value
    assert load_config(cfg_file(tmp_path, f"optim:\n  lr: {text}\n")).optim.lr == value


@pytest.mark.parametrize("text, value", [("1e3", 1000), ("64.0", 64), ("1_024", 1024), ("+8", 8), ("2E2", 200)])
def test_whole_numbers_are_integers(text, value):
    assert load_config(DIGITS, [f"train.batch_size={text}"]).train.batch_size == value


@pytest.mark.parametrize("text, fragment", [
    ("64.5", "not a whole number"), ("1e-3", "not a whole number"), (".inf", "not a whole number"),
    ("abc", "expected an integer, got 'abc'"), ("", "expected an integer, got ''"), ("~", "expected an integer, got nothing"),
    ("[64]", "expected an integer, got a list"), ("{a: 1}", "expected an integer, got a mapping"),
    ("1e30", "too large"), ("true", "expected an integer")])
def test_integers_refused_with_the_reason(text, fragment):
    with pytest.raises(ConfigError, match="train.batch_size: ") as e:
        load_config(DIGITS, [f"train.batch_size={text}"])
    assert fragment in str(e.value)


def test_strings_are_taken_as_written():
    cfg = load_config(DIGITS, ["data.path=2024", "logging.wandb_project=1e3"])
    assert cfg.data.path == "2024" and cfg.logging.wandb_project == "1e3"
    assert load_config(DIGITS, ["data.path=~/mnist"]).data.path == os.path.expanduser("~/mnist")


@pytest.mark.parametrize("text, value", [("true", True), ("False", False), ("yes", True), ("off", False)])
def test_booleans(text, value):
    assert load_config(DIGITS, [f"optim.amsgrad={text}"]).optim.amsgrad is value


def test_a_key_given_twice_is_refused_with_its_line(tmp_path):
    with pytest.raises(ConfigError, match=r"line 4: key 'lr' appears twice"):
        load_config(cfg_file(tmp_path, "optim:\n  name: sgd\n  lr: 0.1\n  lr: 0.2\n"))


def test_errors_name_the_file_and_line(tmp_path):
    path = cfg_file(tmp_path, "model:\n  name: mlp\ntrain:\n  epochs: 2\n  batch_size: lots\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == f"config file {path}, line 5: train.batch_size: expected an integer, got 'lots'"


def test_empty_sections_mean_the_defaults_but_an_empty_file_is_refused(tmp_path):
    assert load_config(cfg_file(tmp_path, "model:\ntrain:\n")) == Config()
    for text in ("", "# nothing yet\n", "---\n", "~\n"):    # the wrong file, or one not yet saved
        with pytest.raises(ConfigError, match="is empty"):
            load_config(cfg_file(tmp_path, text))


def test_merge_keys(tmp_path):
    cfg = load_config(cfg_file(tmp_path, "optim: &o\n  name: adam\n  lr: 0.01\ncomm:\n  timeout_s: 5\n"))
    assert cfg.optim.name == "adam"
    text = "optim:\n  <<: {name: adamw, lr: 0.5}\n  lr: 0.25\n"
    cfg = load_config(cfg_file(tmp_path, text))
    assert (cfg.optim.name, cfg.optim.lr) == ("adamw", 0.25)


@pytest.mark.parametrize("override, fragment", [
    ("data.val_fraction=1.0", "data.val_fraction: expected a value < 1.0"),
    ("data.test_fraction=-0.1", "data.test_fraction: expected a value >= 0.0"),
    ("data.val_fraction=0.9", "data.val_fraction + data.test_fraction: expected less than 1"),
    ("model.dropout=1", "model.dropout: expected a value < 1.0"),
    ("optim.betas=[0.9, 1.0]", "optim.betas[1]: expected a value < 1.0"),
    ("optim.betas=[0.9]", "optim.betas: expected two numbers"),
    ("optim.momentum=1.5", "optim.momentum: expected a value <= 1.0"),
    ("train.seed=-1", "train.seed: expected a value >= 0"),
    ("data.digits=12", "data.digits: expected a value <= 9"),
    ("optim.min_lr=1", "optim.min_lr: expected at most optim.lr"),
    ("optim.lr=nan", "optim.lr: expected a finite number"),
    ("optim.lr.x=1", "optim.lr is a value, not a section"),
    ("optim=3", "optim: expected a mapping of keys"),
])
def test_values_out_of_range_are_refused_at_load(override, fragment):
    overrides = [override] + (["optim.schedule=cosine"] if "min_lr" in override else [])
    with pytest.raises(ConfigError) as e:
        load_config(DIGITS, overrides)
    assert fragment in str(e.value), str(e.value)


@pytest.mark.parametrize("make, fragment", [
    (lambda p: p.mkdir(), "is a folder, expected a file"),
    (lambda p: os.mkfifo(p), "not a regular file"),
    (lambda p: p.write_bytes(b"\xff\xfe\x00binary"), "not a YAML text file"),
    (lambda p: p.write_text("a: b\n---\nc: d\n"), "not valid YAML"),
    (lambda p: p.write_text("- 1\n- 2\n"), "expected a mapping of sections"),
    (lambda p: p.write_text("!!python/object/apply:os.system ['true']\n"), "expected a mapping of sections"),
    (lambda p: p.write_text("x" * (2 << 20)), "bytes, more than"),
])
def test_config_files_of_every_wrong_kind(tmp_path, make, fragment):
    p = tmp_path / "c.yaml"
    make(p)
    with pytest.raises(ConfigError) as e:
        load_config(str(p))
    assert fragment in str(e.value), str(e.value)


def test_devices_are_refused_without_reading():
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config("/dev/zero")


# ----------------------------------------------------------------------------- fuzzing

KEYS = ["backend", "model.name", "model.hidden", "model.dropout", "data.name", "data.val_fraction",
        "train.batch_size", "train.epochs", "train.dtype", "optim.lr", "optim.betas", "optim.nesterov",
        "comm.timeout_s", "comm.algorithm", "comm.compress", "comm.error_feedback", "logging.wandb", "model", "nosuch.key", "train.nosuch", "model.options", "model.options.x",
        "optim.name", "optim.options"]
yaml_scalars = st.one_of(st.integers(-10**20, 10**20).map(str), st.floats(allow_nan=True).map(repr),
                         st.sampled_from(["", "~", "null", "yes", "no", "[1, 2]", "{a: 1}", "[", "'x", "&a 1",
                                          "*a", "!!python/object:os.system", "1e-3", "1e3", "-1", ".inf", "\t"]),
                         st.text(max_size=12))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(KEYS), yaml_scalars), max_size=4))
def test_fuzzed_overrides_load_or_raise_config_error(pairs):
    try:
        cfg = load_config(DIGITS, [f"{k}={v}" for k, v in pairs])
    except ConfigError as e:
        assert "\n" not in str(e) and str(e)
        return
    assert cfg.train.batch_size > 0 and math.isfinite(cfg.optim.lr)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_fuzzed_config_bytes_load_or_raise_config_error(tmp_path, data):
    p = tmp_path / "f.yaml"
    p.write_bytes(data)
    try:
        load_config(str(p))
    except ConfigError as e:
        assert "\n" not in str(e)


# --- every error a --set causes names that --set; suggestions across case; examples of the right kind

CROSS = [   # (overrides, the --set the error must name)
    (["model.name=gpt", "data.name=addition", "model.d_model=30", "model.n_head=4"], "model.d_model=30"),
    (["optim.betas=[0.9]"], "optim.betas=[0.9]"),
    (["data.name=mnist"], "data.name=mnist"),
    (["model.name=gpt"], "model.name=gpt"),
    (["data.name=addition"], "data.name=addition"),
    (["comm.backend=nccl"], "comm.backend=nccl"),
    (["comm.algorithm=ring", "comm.overlap=true"], "comm.overlap=true"),
    (["comm.compress=fp16"], "comm.compress=fp16"),
    (["comm.algorithm=ring", "comm.error_feedback=true"], "comm.error_feedback=true"),
    (["optim.nesterov=true", "optim.momentum=0"], "optim.nesterov=true"),
    (["train.epochs=0"], "train.epochs=0"),
    (["data.val_fraction=0.5", "data.test_fraction=0.5"], "data.val_fraction=0.5"),
    (["optim.schedule=cosine", "optim.min_lr=1", "optim.lr=0.1"], "optim.min_lr=1"),
    (["comm.overlap=true", "optim.zero=1"], "optim.zero=1"),
    (["comm.algorithm=ring", "optim.zero=1"], "optim.zero=1"),
]


@pytest.mark.parametrize("sets,named", CROSS, ids=[c[1] for c in CROSS])
def test_a_cross_check_error_names_the_set_that_caused_it(sets, named):
    with pytest.raises(ConfigError) as e:
        load_config(None, sets)
    print(e.value)
    assert str(e.value).startswith(f"--set {named!r}: ")


def test_a_cross_check_error_names_the_file_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  name: mlp\ntrain:\n  batch_size: 8\n  epochs: 0\n")
    with pytest.raises(ConfigError, match=r"line 5: train.epochs: expected > 0"):
        load_config(str(p))


def _all_keys():
    from dataclasses import fields, is_dataclass
    import typing
    from ddp_scratch.config import Config
    for name, tp in typing.get_type_hints(Config).items():
        if is_dataclass(tp):
            for f in fields(tp):
                yield name, f
        else:
            yield None, name


def test_every_key_in_the_wrong_case_gets_its_right_name():
    for section, f in _all_keys():
        if section is None:
            bad, right = f.upper(), f
        else:
            bad, right = f"{section.upper()}.{f.name}", section
        with pytest.raises(ConfigError) as e:
            load_config(None, [f"{bad}=1"])
        assert f"--set '{bad}=1': unknown config key" in str(e.value) and f"did you mean {right!r}" in str(e.value), str(e.value)


def test_a_list_key_given_one_value_shows_a_list_of_its_own_kind():
    import typing
    from ddp_scratch.config import Config
    for section, f in _all_keys():
        if section is None or typing.get_origin(typing.get_type_hints(type(getattr(Config(), section)))[f.name]) is not list:
            continue
        with pytest.raises(ConfigError) as e:
            load_config(None, [f"{section}.{f.name}=7"])
        default = f.default_factory()
        print(e.value)
        if default:
            assert f"like [{', '.join(map(str, default))}]" in str(e.value)


@pytest.mark.parametrize("section", ["model", "train", "optim", "data", "comm", "logging"])
def test_a_value_given_to_a_section_says_how_to_set_one_key(section):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{section}=x"])
    assert f"--set '{section}=x': {section}: expected a mapping of keys (one key at a time: --set {section}." in str(e.value)


def test_launch_py_keys_lists_every_key_with_its_default():
    """`launch.py keys`: one line per key the config accepts, in YAML's spelling, and nothing else."""
    from dataclasses import asdict
    from ddp_scratch.config import describe_keys
    lines = describe_keys()
    listed = [ln.split()[0] for ln in lines]
    flat = []
    for k, v in asdict(Config()).items():
        flat += [f"{k}.{kk}" for kk in v] if isinstance(v, dict) else [k]
    assert listed == flat
    row = next(ln for ln in lines if ln.startswith("comm.compress "))
    assert row.split()[1:3] == ["str", "none"] and "none, fp16, bf16" in row
    assert next(ln for ln in lines if ln.startswith("optim.lr ")).split()[1:4] == ["float", "0.1", ">"]
    assert [ln.split() for ln in describe_keys("comm")] == [ln.split() for ln in lines if ln.startswith("comm.")]
