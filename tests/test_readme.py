"""The README runs as written: every ```bash block, top to bottom, in a fresh copy of the
checkout (the tracked and untracked files, this checkout's .venv linked in). Blocks that cannot
run here are fenced ```sh and say why in their first line (a cluster, the network); `make test`
is the command running this very test, so it is the one line left out."""
import os
import re
import shutil
import subprocess
import time

import pytest

from conftest import FASHION, ROOT

README = os.path.join(ROOT, "README.md")
FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.M | re.S)
NOT_RUN_REASON = re.compile(r"^# not run by tests/test_readme\.py: (needs a SLURM cluster|needs the network|"
                            r"needs a GPU)")   # the only reasons a block may be left out


def blocks():
    text = open(README, encoding="utf-8").read()
    return [(m.group(2), "\n".join(line[len(m.group(1)):] for line in m.group(3).splitlines()))
            for m in FENCE.finditer(text)]


def test_every_shell_block_runs_or_says_why_not():
    kinds = [k for k, _ in blocks()]
    assert "bash" in kinds
    for kind, body in blocks():
        assert kind in ("bash", "sh", "text", "yaml", ""), f"unknown fence ```{kind}"
        if kind == "sh":
            assert NOT_RUN_REASON.match(body), f"a ```sh block must say why it is not run:\n{body}"


def fresh_copy(dest):
    """The files of this checkout (tracked, and untracked but not ignored), mtimes kept so make
    sees its .venv as up to date; .venv itself linked."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))
    os.symlink(os.path.join(ROOT, ".venv"), os.path.join(dest, ".venv"))
    # `make test` has just brought that .venv up to date: make must not rebuild it from the copy
    stamp = os.stat(os.path.join(ROOT, ".venv", "bin", ".installed")).st_mtime
    os.utime(os.path.join(dest, "pyproject.toml"), (stamp - 1, stamp - 1))


@pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, ".venv", "bin", ".installed")),
                    reason="needs the checkout's .venv (make setup)")
def test_the_readme_runs_top_to_bottom(tmp_path):
    tree = tmp_path / "checkout"
    fresh_copy(str(tree))
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    env.pop("PYTEST_CURRENT_TEST", None)
    ran = 0
    for kind, body in blocks():
        if kind != "bash":
            continue
        script = re.sub(r"^make test\b.*$", "# make test: the command that runs this test", body, flags=re.M)
        if FASHION in script and not os.path.isdir(FASHION):
            assert os.environ.get("DDP_REQUIRE_FASHION") != "1", f"{FASHION} missing"
            print(f"(skipped here, {FASHION} is not installed)\n{script}")
            continue
        t0 = time.monotonic()
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tree, env=env, text=True,
                           capture_output=True, timeout=600)
        print(f"--- ({time.monotonic() - t0:.1f} s)\n{script}\n{r.stdout[-1500:]}{r.stderr[-1500:]}")
        assert r.returncode == 0, f"README block failed (exit {r.returncode}):\n{script}\n{r.stderr[-3000:]}"
        assert "Traceback" not in r.stderr
        ran += 1
    assert ran >= 5
