"""The package as a user installs it: the wheel (not an editable install) in a fresh virtual environment,
away from the source tree, ingests a prompt and answers SQL.

Slow (it installs torch from its wheel and the dependencies from PyPI), so it runs with `-m slow`; CI
runs it (.ci/run).
"""

from __future__ import annotations

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

    warehouse = tmp_path / "w"
    args = ["ingest", "--db", warehouse, "--model", "gpt2-tiny", "--prompt", "The capital of France is", "--quiet"]
    missing = _run(actwh, *args, cwd=tmp_path)
    if missing.returncode != 0:  # GPT-2's ranks come from a package pip does not install by itself
        lines = missing.stderr.strip().splitlines()
        assert len(lines) == 1 and "pip install --no-deps openai-whisper" in lines[0], missing.stderr
        fixed = _run(pip, "install", "-q", "--no-deps", "openai-whisper==20250625", cwd=tmp_path)
        assert fixed.returncode == 0, fixed.stderr
        missing = _run(actwh, *args, cwd=tmp_path)
    assert missing.returncode == 0, missing.stderr
    answer = _run(actwh, "sql", "--db", warehouse, "--format", "csv", "SELECT count(*) FROM prompts", cwd=tmp_path)
    assert answer.returncode == 0 and answer.stdout.splitlines()[-1] == "1", answer.stdout + answer.stderr
    views = _run(actwh, "sql", "--db", warehouse, "SELECT count(*) FROM mlp_act_times_grad", cwd=tmp_path)
    assert views.returncode == 0, views.stderr
