"""Every wrong run file is one ValueError naming the file and the field (study/runfile.py), and no
file content at all makes write_report raise anything else (a hypothesis property)."""
import copy
import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ddp_scratch.study import plots
from ddp_scratch.study.environment import describe
from ddp_scratch.study.report import load_runs, write_report
from test_report import run

ENV = describe(threads=1, hosts=["n1"], mpi_library="MPICH 4.2", ranks=2)


def valid(n=2, rep=0):
    r = run("strong", n, rep, 0.5 / n, source="measured-rapl")
    r.update(device="x86_64", backend="numpy", dtype="float32", environment=copy.deepcopy(ENV))
    return r


def one_file(tmp_path, content):
    """DIR/runs/ holding a valid baseline run (repeat 1, so that x.json may be world 1) and
    `content` (an object or bytes) as x.json."""
    (tmp_path / "runs").mkdir(exist_ok=True)
    (tmp_path / "runs" / "a.json").write_text(json.dumps(valid(1, rep=1)))
    data = content if isinstance(content, bytes) else json.dumps(content).encode()
    (tmp_path / "runs" / "x.json").write_bytes(data)
    return tmp_path


def mutated(path, value=None, delete=False):
    r = valid()
    *parents, last = path
    obj = r
    for p in parents:
        obj = obj[p]
    if delete:
        del obj[last]
    else:
        obj[last] = value
    return r


CASES = [  # (what is wrong, the file's content, what the message must name)
    ("energy.joules_per_step a string", mutated(["energy", "joules_per_step"], "x"), "energy.joules_per_step"),
    ("step median 0", mutated(["step_time_s", "median"], 0), "step_time_s.median"),
    ("step median negative", mutated(["step_time_s", "median"], -0.1), "step_time_s.median"),
    ("world_size a string", mutated(["world_size"], "2"), "world_size"),
    ("world_size true", mutated(["world_size"], True), "world_size"),
    ("repeat missing", mutated(["repeat"], delete=True), "missing keys ['repeat']"),
    ("repeat a float", mutated(["repeat"], 0.5), "repeat"),
    ("mfu a string", mutated(["mfu"], "high"), "mfu"),
    ("comm_s a list", mutated(["comm_s"], [1, 2, 3]), "comm_s"),
    ("wait_s.max null", mutated(["wait_s", "max"], None), "wait_s.max"),
    ("peak memory huge", mutated(["peak_mem_bytes", "max"], 1e300), "peak_mem_bytes.max"),
    ("config an object", mutated(["config"], {"a": 1}), "config"),
    ("config two lines", mutated(["config"], "a\nb"), "config"),
    ("model empty", mutated(["model"], ""), "model"),
    ("energy null", mutated(["energy"], None), "energy"),
    ("energy.source a number", mutated(["energy", "source"], 3), "energy.source"),
    ("global_batch 0", mutated(["global_batch"], 0), "global_batch"),
    ("tokens_per_s a string", mutated(["tokens_per_s"], "many"), "tokens_per_s"),
    ("device a number", mutated(["device"], 5), "device"),
    ("n_params a float", mutated(["n_params"], 1.5), "n_params must be an integer from 1"),
    ("n_params 0", mutated(["n_params"], 0), "n_params must be an integer from 1"),
    ("environment a list", mutated(["environment"], []), "environment"),
    ("environment.hosts a string", mutated(["environment", "hosts"], "n1"), "environment.hosts"),
    ("environment.gpus[0].name a number", mutated(["environment", "gpus"], [{"name": 1}]),
     "environment.gpus[0].name"),
    ("environment.git_dirty a string", mutated(["environment", "git_dirty"], "yes"), "environment.git_dirty"),
    ("a JSON list", [valid()], "expected a JSON object"),
    ("a JSON string", "run", "expected a JSON object"),
    ("an empty file", b"", "the file is empty"),
    ("whitespace", b"  \n", "the file is empty"),
    ("random bytes", bytes(range(256)) * 3, "invalid JSON"),
    ("NaN", b'{"mode": NaN}', "NaN is not a JSON number"),
    ("1e999", json.dumps(valid()).replace('"samples_per_s": ', '"samples_per_s": 1e999, "x": ').encode(),
     "samples_per_s"),
    ("deeply nested", b"[" * 100000 + b"]" * 100000, "invalid JSON"),
    ("a 5000-digit number", b'{"world_size": ' + b"9" * 5000 + b"}", "invalid JSON"),
    ("latin-1 text", '{"model": "Ölmodell"}'.encode("latin-1"), "not UTF-8"),
]


@pytest.mark.parametrize("what, content, field", CASES, ids=[c[0] for c in CASES])
def test_each_wrong_file_is_one_value_error_naming_file_and_field(tmp_path, what, content, field):
    with pytest.raises(ValueError) as info:
        write_report(one_file(tmp_path, content))
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "runs" / "x.json") + ": "), msg
    assert field in msg, msg
    assert not (tmp_path / "report.md").exists()


def test_a_missing_key_says_what_a_run_file_holds_not_where_the_code_is(tmp_path):
    with pytest.raises(ValueError) as info:
        write_report(one_file(tmp_path, mutated(["wait_s"], delete=True)))
    msg = str(info.value)
    assert ("missing keys ['wait_s'] (expected a run file of `launch.py scaling`, an object with the keys "
            "mode, config, model, world_size, ") in msg
    assert ".py" not in msg.replace("launch.py", "")           # no pointer into the source code


def test_special_files_named_json_are_refused_without_blocking(tmp_path):
    one_file(tmp_path, valid())
    (tmp_path / "runs" / "x.json").unlink()
    (tmp_path / "runs" / "x.json").mkdir()
    with pytest.raises(ValueError, match=r"x\.json: is a directory, expected a regular JSON file"):
        load_runs(tmp_path)
    (tmp_path / "runs" / "x.json").rmdir()
    os.mkfifo(tmp_path / "runs" / "x.json")              # open() of a FIFO would wait for a writer
    with pytest.raises(ValueError, match=r"x\.json: is a FIFO"):
        load_runs(tmp_path)
    os.unlink(tmp_path / "runs" / "x.json")
    os.symlink(tmp_path / "nowhere", tmp_path / "runs" / "x.json")
    with pytest.raises(ValueError, match=r"x\.json: cannot open: No such file"):
        load_runs(tmp_path)


def test_a_valid_run_with_environment_passes_and_extra_keys_are_fine(tmp_path):
    r = valid()
    r["something_new"] = {"from": "a later version"}
    r["environment"]["future_field"] = [1, 2]
    one_file(tmp_path, r)
    assert len(load_runs(tmp_path)) == 2


# ----------------------------------------------------------------------------- the property

PATHS = [(k,) for k in valid()] + [(k, q) for k in ("step_time_s", "compute_s", "comm_s", "wait_s",
                                                      "peak_mem_bytes") for q in ("min", "median", "max")]
PATHS += [("energy", k) for k in valid()["energy"]] + [("environment", k) for k in ENV]
PATHS += [("environment", "gpus"), ("new_key",), ("n_params",)]
numbers = st.one_of(st.integers(-10**6, 10**6), st.integers(), st.floats(),
                    st.sampled_from([0, -1, 1e-320, 1e-9, 1e6, 1e30, 1e31, 1e308, 2**63, 0.0]))
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=30))
json_values = st.recursive(scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=8), kids, max_size=4)), max_leaves=8)
mutation = st.tuples(st.sampled_from(PATHS), st.booleans(), json_values)


def fast_plots(monkeypatch):
    """Draw every figure (layout, transforms, text: where odd values would fail) but encode no
    file: the property is about values, and PNG/PDF encoding of a drawn figure does not see them."""
    def draw_only(self, fig, name):
        fig.canvas.draw()
        self.out.update({f"{name}.png": b"", f"{name}.pdf": b""})
    monkeypatch.setattr(plots, "DPI", 20)
    monkeypatch.setattr(plots._Plotter, "save", draw_only)


def apply(r, path, delete, value):
    obj = r
    for p in path[:-1]:
        if not isinstance(obj.get(p), dict):
            return
        obj = obj[p]
    if delete:
        obj.pop(path[-1], None)
    else:
        obj[path[-1]] = value


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(muts=st.lists(mutation, min_size=1, max_size=4), n=st.sampled_from([1, 2, 4]),
       raw=st.one_of(st.none(), st.binary(max_size=64), json_values))
def test_no_run_file_content_raises_anything_but_value_error(monkeypatch, muts, n, raw):
    fast_plots(monkeypatch)
    r = valid(n)
    for m in muts:
        apply(r, *m)
    content = r if raw is None else raw
    with tempfile.TemporaryDirectory() as d:
        d = one_file(Path(d), content if isinstance(content, bytes) else
                     json.dumps(content, allow_nan=True).encode())
        try:
            write_report(d)
        except ValueError as e:
            assert "\n" not in str(e) and str(d / "runs" / "x.json") in str(e), str(e)
        else:
            assert (d / "report.md").read_text().startswith("# Scaling report")
            event("rendered")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.tuples(st.sampled_from([p for p in PATHS if p[0] != "environment"]),
                                 st.sampled_from([0, 1e-9, 1.5e-9, 1e-6, 1, 1e6, 1e29, 1e30, None])),
                       min_size=1, max_size=6))
def test_extreme_but_valid_numbers_render(monkeypatch, values):
    """Values at the edges of what validation accepts reach the plots and must still draw."""
    fast_plots(monkeypatch)
    r = valid(4)
    for path, v in values:
        apply(r, path, False, v)
    with tempfile.TemporaryDirectory() as d:
        d = one_file(Path(d), r)
        try:
            write_report(d)
        except ValueError as e:
            assert str(d / "runs" / "x.json") in str(e), str(e)
