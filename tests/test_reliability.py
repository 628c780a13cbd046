"""Crash safety, resume and the one-writer rule, checked against real ingest processes.

Each test drives `cli.py ingest` as a subprocess (the thing a user runs, and the only way to SIGKILL
it), with the built-in gpt2-tiny model and two prompts per batch so a run spans many commits.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from warehouse import db

ROOT = Path(__file__).resolve().parent.parent
N_PROMPTS = 16
FACT_ORDER = "p.text, a.dst, a.pass_type, a.layer, a.token, a.token2, a.head, a.node_index"


def prompt_lines(n: int = N_PROMPTS) -> list[str]:
    """Distinct prompts of varied lengths, so batches pad differently depending on where a run resumes."""
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "bright"]
    return [f"Prompt {i}: " + " ".join(words[: 2 + (i * 5) % len(words)]) for i in range(n)]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(prompt_lines()) + "\n")
    return path


def ingest_args(db_path: Path, prompts: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "cli.py"),
        "ingest",
        "--db",
        str(db_path),
        "--model",
        "gpt2-tiny",
        "--prompts",
        str(prompts),
        "--batch-size",
        "2",
        "--quiet",
        *extra,
    ]


def start(db_path: Path, prompts: Path, *extra: str) -> subprocess.Popen[str]:
    """One torch thread: two ingests at once on a small machine would otherwise fight over cores."""
    return subprocess.Popen(
        ingest_args(db_path, prompts, *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        # a CI runner started in the background ignores SIGINT, and children inherit that: restore it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def wait_for_lock(db_path: Path, proc: subprocess.Popen[str], timeout: float = 60.0) -> bool:
    """Until `proc` holds the ingest lock (it writes its pid into the lock file); False if it exited first."""
    lock = db_path.with_name(db_path.name + ".ingest.lock")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if lock.read_text().strip() == str(proc.pid):
                return True
        except FileNotFoundError:
            pass
        time.sleep(0.005)
    raise AssertionError(f"ingest {proc.pid} never took the lock")


def query(db_path: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def facts(db_path: Path) -> pa.Table:
    """Every stored value keyed by prompt text (prompt ids depend on commit order, values must not)."""
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        return con.sql(
            f"SELECT {FACT_ORDER}, a.value FROM activations a JOIN prompts p USING (prompt_id) ORDER BY {FACT_ORDER}"
        ).to_arrow_table()
    finally:
        con.close()


def tokens(db_path: Path) -> list[tuple]:
    return query(
        db_path,
        "SELECT p.text, t.position, t.token_id, t.text FROM tokens t JOIN prompts p USING (prompt_id) ORDER BY ALL",
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, prompts_file: Path) -> tuple[Path, float]:
    """An uninterrupted run, and how long it held the lock (to spread kill points over a run)."""
    path = tmp_path_factory.mktemp("reference") / "reference.duckdb"
    proc = start(path, prompts_file)
    assert wait_for_lock(path, proc), proc.communicate()[1]
    locked_at = time.monotonic()
    code, out, err = finish(proc)
    assert code == 0, err
    assert f"stored {N_PROMPTS} prompts" in out
    return path, time.monotonic() - locked_at


def assert_same_as_reference(db_path: Path, reference: Path) -> None:
    texts = query(db_path, "SELECT text, count(*) FROM prompts GROUP BY text ORDER BY text")
    assert texts == sorted((t, 1) for t in prompt_lines()), "every prompt exactly once"
    assert tokens(db_path) == tokens(reference)
    got, want = facts(db_path), facts(reference)
    assert got.num_rows == want.num_rows
    assert got.equals(want), "stored values differ from the uninterrupted run"


def committed(db_path: Path) -> int:
    """Prompts committed so far; a file killed before its schema committed holds none. Opened the way
    actwh's readers open, queued with the writer, so a poll gets in between two commits of a fast run."""
    if not db_path.exists():
        return 0
    try:
        con = db.connect(db_path, read_only=True)
    except db.NotAWarehouse:
        return 0
    try:
        return con.execute("SELECT count(*) FROM prompts").fetchall()[0][0]
    finally:
        con.close()


def wait_until_committed(db_path: Path, proc: subprocess.Popen[str], n: int) -> None:
    """Poll between the writer's commits."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if committed(db_path) >= n:
                return
        except (duckdb.Error, db.WarehouseError):
            pass
        time.sleep(0.1)
    if proc.poll() is None:
        raise AssertionError(f"ingest stalled before {n} prompts were committed")


def test_sigkill_at_random_points_then_resume_stores_each_prompt_once_with_identical_values(
    tmp_path: Path, prompts_file: Path, reference: tuple[Path, float]
) -> None:
    """Each kill waits for a random number of committed prompts (polled between commits), then a random
    part of a batch, so kills land anywhere (registering the model, running a batch, mid-commit) at any
    machine speed; repeated until two kills landed after their run committed some prompts but not all."""
    reference_db, _ = reference
    seed = int(os.environ.get("ACTWH_KILL_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    files = (tmp_path / f"killed{i}.duckdb" for i in range(6))
    path = next(files)
    outcomes: list[int] = []
    mid_run = 0
    while mid_run < 2 and len(outcomes) < 8:
        before = committed(path)
        proc = start(path, prompts_file)
        if wait_for_lock(path, proc):
            wait_until_committed(path, proc, rng.randint(before, max(before, N_PROMPTS - 6)))
            time.sleep(rng.uniform(0.0, 0.2))
            proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        after = committed(path)
        assert after >= before, f"seed {seed}: a kill lost committed prompts"
        if after == N_PROMPTS:  # the run outpaced its kill: start again on a new file
            path, outcomes, mid_run = next(files), [], 0
            continue
        outcomes.append(proc.returncode)
        mid_run += proc.returncode == -signal.SIGKILL and after > before
    assert mid_run >= 1, f"seed {seed}: no kill landed mid-run ({outcomes})"

    code, out, err = finish(start(path, prompts_file))
    assert code == 0, f"seed {seed}: {err}"
    stored = re.search(r"stored (\d+) prompts", out)
    assert stored and f"{N_PROMPTS - int(stored[1])} already stored" in out, out
    assert_same_as_reference(path, reference_db)

    runs = query(path, "SELECT status, message, n_prompts FROM runs ORDER BY run_id")
    statuses = [status for status, _, _ in runs]
    assert statuses[-1] == "completed", f"seed {seed}: {runs}"
    assert 1 <= statuses.count("interrupted") <= outcomes.count(-signal.SIGKILL), f"seed {seed}: {runs}"
    assert set(statuses) == {"completed", "interrupted"}, f"seed {seed}: {runs}"
    for status, message, _ in runs:
        assert status == "completed" or message == "the ingest process stopped before finishing"
    assert sum(n for _, _, n in runs) == N_PROMPTS, f"seed {seed}: every prompt credited to the run that stored it"


def interrupt_mid_run(tmp_path: Path, prompts: Path, n: int, signum: signal.Signals) -> tuple[Path, int, str]:
    """Signal an ingest between its first commit and its last. Polling the file for commits starves
    behind a fast writer, so the signal goes a growing delay after the ingest takes its lock, and an
    attempt that stopped before the first commit or after the last is made again on a fresh file."""
    for attempt, delay in enumerate((0.5, 1.0, 2.0, 4.0)):
        path = tmp_path / f"stopped-{signum.name}-{attempt}.duckdb"
        proc = start(path, prompts, "--no-backward")
        if wait_for_lock(path, proc):
            time.sleep(delay)
            proc.send_signal(signum)
        code, _, err = finish(proc)
        if 0 < committed(path) < n:
            return path, code, err
    pytest.skip("no attempt stopped the ingest between its first and last commit")


@pytest.mark.parametrize(
    ("signum", "message"),
    [(signal.SIGINT, "stopped by the user (Ctrl-C)"), (signal.SIGTERM, "stopped by SIGTERM")],
)
def test_sigint_and_sigterm_mark_the_run_interrupted_and_resume(
    tmp_path: Path, signum: signal.Signals, message: str
) -> None:
    """Ctrl-C and SIGTERM stop at once (batches still queued are dropped), exit 130 with one line, and
    record the run as interrupted; the rerun stores the rest."""
    n = 200
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(prompt_lines(n)) + "\n")
    path, code, err = interrupt_mid_run(tmp_path, prompts, n, signum)
    assert code == 130, f"{signum!r}: {err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: interrupted"), f"{signum!r}: {err}"
    assert "rerun the same command to resume" in lines[0]
    runs = query(path, "SELECT run_id, status, message, n_prompts FROM runs ORDER BY run_id")
    assert runs[-1][1:3] == ("interrupted", message), f"{signum!r}: {runs}"
    assert 0 < committed(path) < n, f"{signum!r}: {runs}"

    code, out, err = finish(start(path, prompts, "--no-backward"))
    assert code == 0, err
    assert query(path, "SELECT count(*), count(DISTINCT text) FROM prompts") == [(n, n)]
    assert [r[0] for r in query(path, "SELECT status FROM runs ORDER BY run_id")] == ["interrupted", "completed"]


LOCKED = re.compile(
    r"^error: another ingest \(pid \d+\) is writing to .+: wait for it to finish, or pass --wait to queue behind it$"
)


def test_two_ingests_at_once_one_succeeds_the_other_fails_cleanly(
    tmp_path: Path, prompts_file: Path, reference: tuple[Path, float]
) -> None:
    path = tmp_path / "shared.duckdb"
    first, second = start(path, prompts_file), start(path, prompts_file)
    results = sorted([finish(first), finish(second)])
    (ok_code, ok_out, ok_err), (fail_code, fail_out, fail_err) = results
    assert ok_code == 0, ok_err
    assert f"stored {N_PROMPTS} prompts" in ok_out
    assert fail_code == 2 and fail_out == ""
    assert LOCKED.match(fail_err.strip()) and len(fail_err.strip().splitlines()) == 1, fail_err

    assert_same_as_reference(path, reference[0])
    assert query(path, "SELECT status FROM runs") == [("completed",)]


@pytest.mark.slow
def test_wait_queues_behind_a_running_ingest(tmp_path: Path, prompts_file: Path) -> None:
    path = tmp_path / "queued.duckdb"
    first = start(path, prompts_file)
    assert wait_for_lock(path, first)
    second = start(path, prompts_file, "--wait")
    (code1, out1, err1), (code2, out2, err2) = finish(first), finish(second)
    assert code1 == 0, err1
    assert code2 == 0, err2
    assert f"stored {N_PROMPTS} prompts" in out1
    assert "stored 0 prompts" in out2 and f"{N_PROMPTS} already stored" in out2
    assert query(path, "SELECT count(*), count(DISTINCT text) FROM prompts") == [(N_PROMPTS, N_PROMPTS)]
