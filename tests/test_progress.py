"""The ingest's progress log (`ingest --log-file`): a line per interval with the prompts and tokens the run
has passed on and its tokens/s, and a last line with the totals and how the run ended, equal to what the
warehouse holds; rates computed from the clock; a log file with no folder refused in one line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from ingest import progress
from ingest.progress import Progress
from warehouse import db

LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ run (\d+): ([\d,]+) prompts, ([\d,]+) tokens in [\d.]+ s, [\d.]+ tokens/s(.*)$"
)


def _number(text: str) -> int:
    return int(text.replace(",", ""))


def test_the_log_holds_a_line_per_batch_and_the_totals_the_warehouse_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)  # a line at every batch
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"Prompt {i} says{' more' * i}\n" for i in range(7)))
    log = tmp_path / "ingest.log"
    log.write_text("an earlier line\n")
    path = tmp_path / "w"
    args = ["ingest", "--db", str(path), "--model", "gpt2-tiny", "--prompts", str(prompts), "--quiet"]
    result = CliRunner().invoke(main, [*args, "--batch-size", "3", "--no-backward", "--log-file", str(log)])
    assert result.exit_code == 0, result.output
    lines = log.read_text().splitlines()
    assert lines[0] == "an earlier line"  # appended to, never truncated
    parsed = [LINE.match(line) for line in lines[1:]]
    assert all(parsed), lines
    con = db.connect(path, read_only=True)
    run_id, n_prompts, n_tokens = con.execute(
        "SELECT max(run_id), (SELECT count(*) FROM prompts), (SELECT count(*) FROM tokens) FROM runs"
    ).fetchall()[0]
    con.close()
    counts = [(_number(m[2]), _number(m[3])) for m in parsed if m]
    assert len(counts) == 3 + 1  # batches of 3, 3 and 1 prompts, then the last line
    assert counts[:3] == sorted(counts[:3]) and counts[0][0] == 3 and counts[2] == counts[3]
    assert counts[-1] == (n_prompts, n_tokens) == (7, n_tokens)
    assert all(m and int(m[1]) == run_id for m in parsed)
    assert parsed[-1] and parsed[-1][4] == "; completed"
    assert all(m and "over the last" in m[4] for m in parsed[:-1])


def test_rates_come_from_the_clock(tmp_path: Path) -> None:
    times = iter([100.0, 130.0, 160.0, 200.0])
    log = tmp_path / "log"
    p = Progress(3, bar=False, log_file=log, clock=lambda: next(times))
    p.update(2, 300)  # 30 s in: no line yet
    p.update(1, 600)  # 60 s in: 900 tokens / 60 s
    p.close("interrupted")  # 100 s in
    lines = [line.split(" ", 1)[1] for line in log.read_text().splitlines()]
    assert lines == [
        "run 3: 3 prompts, 900 tokens in 60.0 s, 15.0 tokens/s (15.0 tokens/s over the last 60.0 s)",
        "run 3: 3 prompts, 900 tokens in 100.0 s, 9.0 tokens/s; interrupted",
    ]


def test_a_log_file_without_a_folder_is_refused_in_one_line(tmp_path: Path) -> None:
    args = ["ingest", "--db", str(tmp_path / "w"), "--model", "gpt2-tiny", "--prompt", "Hello"]
    result = CliRunner().invoke(main, [*args, "--log-file", str(tmp_path / "missing" / "log")])
    assert result.exit_code == 2
    assert "--log-file" in result.output and "no folder" in result.output
    assert not (tmp_path / "w").exists()
