"""The package as a user installs it: the wheel (not an editable install) in a fresh virtual environment,
away from the source tree, ingests a prompt and answers SQL.

Slow (it installs torch from its wheel and the dependencies from PyPI), so it runs with `-m slow`; CI
runs it (.ci/run).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=1200)


@pytest.mark.slow
def test_the_installed_wheel_ingests_and_answers(tmp_path: Path) -> None:
    built = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "dist", ROOT, cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("actwh-*.whl")
    venv = tmp_path / "venv"
    assert _run(sys.executable, "-m", "venv", venv, cwd=tmp_path).returncode == 0
    pip, actwh = venv / "bin" / "pip", venv / "bin" / "actwh"
    for packages in (["torch==2.13.0"], [wheel]):  # torch first: its CPU wheel, as the README says
        done = _run(pip, "install", "-q", *packages, cwd=tmp_path)
        assert done.returncode == 0, done.stderr

    # the default model first, as the README's first command runs it: it works, or its one line of error
    # is the command that makes it work
    warehouse = tmp_path / "w"
    prompt = ["--prompt", "The capital of France is", "--quiet"]
    _ingest_or_one_fix(actwh, ["--db", warehouse, *prompt], tmp_path)
    _ingest_or_one_fix(actwh, ["--db", warehouse, "--model", "gpt2-tiny", *prompt], tmp_path)
    answer = _run(actwh, "sql", "--db", warehouse, "--format", "csv", "SELECT count(*) FROM prompts", cwd=tmp_path)
    assert answer.returncode == 0 and answer.stdout.splitlines()[-1] == "2", answer.stdout + answer.stderr
    views = _run(actwh, "sql", "--db", warehouse, "SELECT count(*) FROM mlp_act_times_grad", cwd=tmp_path)
    assert views.returncode == 0, views.stderr


def _ingest_or_one_fix(actwh: Path, args: list[object], cwd: Path) -> None:
    """`actwh ingest ARGS` succeeds, or fails with one line whose command in backquotes (a pip install of a
    package the wheel cannot declare) makes the same ingest succeed."""
    first = _run(actwh, "ingest", *args, cwd=cwd)
    if first.returncode != 0:
        lines = first.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].count("`") == 2, first.stderr
        command = shlex.split(lines[0].split("`")[1])
        assert command[1:5] == ["-m", "pip", "install", "--no-deps"], command
        fixed = _run(*command, cwd=cwd)
        assert fixed.returncode == 0 and "ERROR" not in fixed.stderr, fixed.stderr
        again = _run(actwh, "ingest", *args, cwd=cwd)
        assert again.returncode == 0, again.stderr


@pytest.mark.slow
def test_make_demo_on_a_fresh_venv_prints_no_error_line(tmp_path: Path) -> None:
    """A newcomer's first screen: `make demo` creates the environment, installs, ingests and answers, and
    nothing it prints says ERROR (pip's resolver complaint about the data packages' unused dependencies
    included)."""
    done = _run("make", "-C", ROOT, "demo", f"VENV={tmp_path / 'venv'}", f"DEMO_DB={tmp_path / 'demo'}", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    shown = (done.stdout + done.stderr).splitlines()
    assert not [line for line in shown if "ERROR" in line or "Traceback" in line], shown
