"""`actwh sql` writes a result as its rows arrive: memory stays bounded whatever the result's size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from warehouse import db

ROOT = Path(__file__).resolve().parent.parent
ROWS = 15_000_000  # about 440 MB of CSV: held whole, as Arrow and then as text, it would need more than that
QUERY = f"SELECT range AS i, range * 0.5 AS x, 'token' || (range % 1000) AS t FROM range({ROWS})"
# Counts the CSV lines as they arrive and reports the child's peak RSS (its own, not the test process's).
MEASURE = """
import json, resource, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE)
lines = sum(chunk.count(b"\\n") for chunk in iter(lambda: proc.stdout.read(1 << 20), b""))
proc.wait()
print(json.dumps({"code": proc.returncode, "lines": lines,
                  "peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def _measure(path: Path, query: str) -> dict:
    args = [sys.executable, str(ROOT / "cli.py"), "sql", "--db", str(path), "--format", "csv", query]
    done = subprocess.run([sys.executable, "-c", MEASURE, *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_sql_streams_a_result_larger_than_its_memory_bound(tmp_path: Path) -> None:
    path = tmp_path / "w"
    db.connect(path).close()
    idle = _measure(path, "SELECT 1")
    big = _measure(path, QUERY)
    assert idle["code"] == big["code"] == 0
    assert big["lines"] == ROWS + 1  # the header, then every row
    assert big["peak_mb"] - idle["peak_mb"] < 150, (idle, big)


def test_table_format_shows_the_first_rows_and_counts_the_rest(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from click.testing import CliRunner

    from cli import main
    from queries import format as formats

    path = tmp_path / "w"
    db.connect(path).close()
    monkeypatch.setattr(formats, "TABLE_ROWS", 5)
    result = CliRunner().invoke(main, ["sql", "--db", str(path), "SELECT range AS i FROM range(12)"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert [line.strip() for line in lines[2:-1]] == ["0", "1", "2", "3", "4"]
    assert lines[-1] == "(first 5 of 12 rows: --format csv or json gives all)"
    small = CliRunner().invoke(main, ["sql", "--db", str(path), "SELECT 1 AS one"])
    assert small.output.strip().splitlines()[-1] == "(1 row)"
