"""The rooms of the package and the rules between them (see ddp_scratch/__init__.py), read from
the source with `ast`: every import counts, also one inside a function.

The checker is tested on a small fake package as well, so a rule that could never fire fails here.
"""
import ast
import os
import textwrap

import pytest

from conftest import ROOT

PKG = "ddp_scratch"
ROOMS = ("nn", "data", "parallel", "run", "study", "cli")
# room -> rooms it must never import (the top level, backend/config/errors/fsutil, imports no room)
FORBIDDEN = {
    "nn": {"data", "parallel", "run", "study", "cli"},        # the math knows no MPI, files or runs
    "data": {"parallel", "run", "study", "cli"},
    "parallel": {"nn", "data", "run", "study", "cli"},        # it sees buffers, never models
    "study": {"run", "cli"},
    "run": {"cli"},
    "cli": set(),
    "": set(ROOMS),
}
MAX_LINES = 400


def module_name(root, path):
    rel = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def package_modules(root, pkg=PKG):
    """{module name: file path} for every .py file of the package under root."""
    mods = {}
    for dirpath, dirs, files in os.walk(os.path.join(root, pkg)):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
        for f in sorted(files):
            if f.endswith(".py"):
                mods[module_name(root, os.path.join(dirpath, f))] = os.path.join(dirpath, f)
    return mods


def imports_of(name, path, mods):
    """Package modules that `name` imports anywhere in its file (function bodies included)."""
    is_pkg = path.endswith("__init__.py")
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                stem = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from pkg import sub` names a submodule when one exists, else an attribute of pkg
            targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in mods else stem for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in mods:         # `import ddp_scratch.nn.ops.x` -> the longest module
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def room_of(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ROOMS) else ""


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def violations(root, pkg=PKG):
    mods = package_modules(root, pkg)
    graph = {m: imports_of(m, p, mods) for m, p in mods.items()}
    bad = []
    for m, deps in sorted(graph.items()):
        for d in sorted(deps):
            src, dst = room_of(m), room_of(d)
            if dst in FORBIDDEN.get(src, ()):
                bad.append(f"{m} imports {d}: {src or 'the top level'}/ must not import {dst}/")
    bad += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return bad


def test_the_package_keeps_its_rules():
    bad = violations(ROOT)
    assert not bad, "\n".join(bad)


def test_every_room_exists_and_holds_code():
    mods = package_modules(ROOT)
    for room in ROOMS:
        inside = [m for m in mods if m.startswith(f"{PKG}.{room}.")]
        assert inside, f"{PKG}/{room}/ holds no module"
    top = sorted(m for m in mods if m.count(".") == 1 and room_of(m) == "")
    assert top == [f"{PKG}.{n}" for n in ("backend", "config", "errors", "fsutil")], top


def test_only_launch_py_and_cli_import_cli():
    """Outside the package, launch.py is the one door into cli/ (tests and benchmarks aside)."""
    mods = package_modules(ROOT)
    users = [m for m, p in mods.items() if room_of(m) != "cli"
             and any(room_of(d) == "cli" for d in imports_of(m, p, mods))]
    assert not users
    src = open(os.path.join(ROOT, "launch.py")).read()
    assert "from ddp_scratch.cli.main import main" in src


def test_no_module_grows_past_the_limit_without_a_reason():
    """A file over ~400 lines says at its top why it is one file (a line starting 'Size:')."""
    long = []
    for m, p in package_modules(ROOT).items():
        lines = open(p, encoding="utf-8").read().splitlines()
        doc = ast.get_docstring(ast.parse("\n".join(lines))) or ""
        if len(lines) > MAX_LINES and "Size:" not in doc:
            long.append(f"{m} ({len(lines)} lines)")
    assert not long, long


# ----------------------------------------------------------------------------- the checker can fail

def _fake_package(tmp_path, files):
    for rel, text in files.items():
        p = tmp_path / PKG / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    for d in [tmp_path / PKG, *[(tmp_path / PKG / r) for r in ROOMS]]:
        d.mkdir(exist_ok=True)
        (d / "__init__.py").touch()
    return str(tmp_path)


@pytest.mark.parametrize("files, expected", [
    ({"nn/ops.py": "from ..parallel import world\n", "parallel/world.py": ""},
     "ddp_scratch.nn.ops imports ddp_scratch.parallel.world: nn/ must not import parallel/"),
    ({"parallel/reduce.py": "def f():\n    from ..nn.flat import ParamSpace\n", "nn/flat.py": ""},
     "ddp_scratch.parallel.reduce imports ddp_scratch.nn.flat: parallel/ must not import nn/"),
    ({"data/images.py": "import ddp_scratch.parallel.world as w\n", "parallel/world.py": ""},
     "ddp_scratch.data.images imports ddp_scratch.parallel.world: data/ must not import parallel/"),
    ({"run/trainer.py": "from ddp_scratch.cli import main\n", "cli/main.py": ""},
     "ddp_scratch.run.trainer imports ddp_scratch.cli.main: run/ must not import cli/"),
    ({"config.py": "from .nn import ops\n", "nn/ops.py": ""},
     "ddp_scratch.config imports ddp_scratch.nn.ops: the top level/ must not import nn/"),
    ({"cli/a.py": "from . import b\n", "cli/b.py": "def f():\n    from .a import x\n"},
     "import cycle: ddp_scratch.cli.a -> ddp_scratch.cli.b"),
    ({"cli/a.py": "from .b import y\n", "cli/b.py": "from .c import z\n", "cli/c.py": "import ddp_scratch.cli.a\n"},
     "import cycle: ddp_scratch.cli.a -> ddp_scratch.cli.b -> ddp_scratch.cli.c"),
])
def test_the_checker_catches_a_broken_rule(tmp_path, files, expected):
    assert violations(_fake_package(tmp_path, files)) == [expected]


def test_the_checker_accepts_allowed_imports(tmp_path):
    root = _fake_package(tmp_path, {
        "nn/ops.py": "from .. import backend\nfrom ..errors import E\n", "backend.py": "", "errors.py": "",
        "run/trainer.py": "from ..nn import ops\nfrom ..parallel.world import Comm\nfrom ..study import metrics\n",
        "parallel/world.py": "", "study/metrics.py": "",
        "cli/main.py": "from ..run.trainer import T\nfrom . import local\n", "cli/local.py": "import os\n"})
    assert violations(root) == []
