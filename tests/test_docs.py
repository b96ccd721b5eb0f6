"""docs/extending.md stays true to the code it teaches: every code excerpt is in the file it
comes from, verbatim; every file a command names exists; every launch.py subcommand it uses
exists; the interface it documents is the one the plug-in checker enforces. (Its commands run
in tests/examples/test_examples.py and tests/nn/test_gradcheck.py.)"""
import os
import re
import textwrap

import pytest

from conftest import ROOT

DOC = os.path.join(ROOT, "docs", "extending.md")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
SOURCES = ["examples/resmlp/resmlp.py", "examples/optimizers/radam.py", "examples/resmlp/resmlp_digits.yaml"]


def blocks(kind):
    return [b for k, b in FENCE.findall(open(DOC, encoding="utf-8").read()) if k == kind]


def normalized(text):
    """Lines without their indentation (an excerpt of a method is shown dedented)."""
    return "\n".join(line.strip() for line in textwrap.dedent(text).strip().splitlines())


@pytest.mark.parametrize("kind", ["python", "yaml"])
def test_every_excerpt_is_in_its_source_verbatim(kind):
    sources = {p: open(os.path.join(ROOT, p), encoding="utf-8").read() for p in SOURCES}
    assert blocks(kind)
    for block in blocks(kind):
        want = normalized(block)
        found = [p for p, text in sources.items()
                 if want in normalized(text) or all(normalized(part) in normalized(text)      # YAML: each section
                                                    for part in re.split(r"\n(?=\S)", block.strip()))]
        assert found, f"this excerpt of docs/extending.md is in none of {SOURCES}:\n{block}"


def test_every_command_names_files_that_exist_and_subcommands_that_exist():
    from ddp_scratch.cli.main import build_parser
    commands = set(build_parser()._subparsers._group_actions[0].choices)
    lines = [line for b in blocks("sh") for line in b.splitlines() if "launch.py" in line]
    assert len(lines) >= 6
    for line in lines:
        args = line.split("launch.py", 1)[1].split()
        assert args[0] in commands, line
        for a in args[1:]:
            path = a.split("=")[-1].split(":")[0]
            if path.endswith((".py", ".yaml")) and not path.startswith(("mywork/", "runs/")):
                assert os.path.isfile(os.path.join(ROOT, path)), f"{path} (in: {line})"


def test_the_documented_model_interface_is_the_enforced_one():
    from ddp_scratch.nn.plugins import MODEL_ARGS, MODEL_METHODS, OPTIMIZER_ARGS, OPTIMIZER_METHODS
    text = open(DOC, encoding="utf-8").read()
    for sig in [*MODEL_METHODS.values(), *OPTIMIZER_METHODS.values()]:
        assert f"`{sig}`" in text, sig
    assert "Model(d_in=, n_out=, options=, dtype=, seed=, build=)" in text and MODEL_ARGS in text
    assert "(space, lr, weight_decay=0.0, maximize=False, options=None)" in text
    assert OPTIMIZER_ARGS == "(space, lr=, weight_decay=, maximize=, options=)"
