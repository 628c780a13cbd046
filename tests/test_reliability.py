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
from contextlib import suppress
from pathlib import Path

import pyarrow as pa
import pytest

from queries import Warehouse
from warehouse import db

ROOT = Path(__file__).resolve().parent.parent
N_PROMPTS = 32
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


def warehouse_rows(db_path: Path, sql: str) -> list[tuple]:
    """Through the public API, which opens the file the way every actwh reader does (queued with a writer)."""
    return Warehouse(db_path).sql(sql, output="rows")


def facts(db_path: Path) -> pa.Table:
    """Every stored value keyed by prompt text (prompt ids depend on commit order, values must not)."""
    return Warehouse(db_path).sql(
        f"SELECT {FACT_ORDER}, a.value FROM activations a JOIN prompts p USING (prompt_id) ORDER BY {FACT_ORDER}"
    )


def tokens(db_path: Path) -> list[tuple]:
    return warehouse_rows(
        db_path,
        "SELECT p.text, t.token, t.token_id, t.text FROM tokens t JOIN prompts p USING (prompt_id) ORDER BY ALL",
    )


def runs(db_path: Path) -> list[tuple]:
    return warehouse_rows(db_path, "SELECT status, message, n_prompts FROM runs ORDER BY run_id")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, prompts_file: Path) -> Path:
    """An uninterrupted run."""
    path = tmp_path_factory.mktemp("reference") / "reference.duckdb"
    code, out, err = finish(start(path, prompts_file))
    assert code == 0, err
    assert f"stored {N_PROMPTS} prompts" in out
    return path


def assert_same_as_reference(db_path: Path, reference: Path) -> None:
    texts = warehouse_rows(db_path, "SELECT text, count(*) FROM prompts GROUP BY text ORDER BY text")
    assert texts == sorted((t, 1) for t in prompt_lines()), "every prompt exactly once"
    assert tokens(db_path) == tokens(reference)
    got, want = facts(db_path), facts(reference)
    assert got.num_rows == want.num_rows
    assert got.equals(want), "stored values differ from the uninterrupted run"


def committed(db_path: Path) -> int:
    """Prompts committed so far; a file killed before its schema committed holds none."""
    if not db_path.exists():
        return 0
    try:
        return warehouse_rows(db_path, "SELECT count(*) FROM prompts")[0][0]
    except db.NotAWarehouse:
        return 0


def wait_until_committed(db_path: Path, proc: subprocess.Popen[str], n: int) -> None:
    """Poll between the writer's commits until n prompts are in; fails if the ingest exits or stalls first.
    Once the warehouse exists one session is held, so a poll costs milliseconds (a fresh open costs a
    few hundred, long enough for a fast machine to commit several batches unseen)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        with suppress(db.WarehouseError):
            warehouse = Warehouse(db_path)
            with warehouse.session():
                while time.monotonic() < deadline and proc.poll() is None:
                    if warehouse.sql("SELECT count(*) FROM prompts", output="rows")[0][0] >= n:
                        return
                    time.sleep(0.005)
        time.sleep(0.02)
    if proc.poll() is None:
        raise AssertionError(f"ingest stalled before {n} prompts were committed")
    raise AssertionError(f"ingest exited ({proc.returncode}) before {n} prompts were committed: {proc.communicate()}")


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_stores_each_prompt_once_with_identical_values(
    tmp_path: Path, prompts_file: Path, reference: Path
) -> None:
    """Each kill waits for a random number of committed prompts (polled between commits) and then a random
    part of a batch, or, for none, a random time after the start (importing, loading, registering the
    model, the first batch), so kills land anywhere at any machine speed; repeated until two kills landed
    after their run committed some prompts but not all."""
    seed = int(os.environ.get("ACTWH_KILL_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    fresh = 0
    path = tmp_path / "killed0"
    outcomes: list[int] = []
    mid_run = 0
    while mid_run < 2 and len(outcomes) < 8:
        before = committed(path)
        proc = start(path, prompts_file)
        wanted = rng.randint(before, max(before, N_PROMPTS // 2))
        if wanted > before:
            wait_until_committed(path, proc, wanted)
            time.sleep(rng.uniform(0.0, 0.05))
        else:
            time.sleep(rng.uniform(0.5, 3.0))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        after = committed(path)
        assert after >= before, f"seed {seed}: a kill lost committed prompts"
        if after == N_PROMPTS:  # the run outpaced its kill: start again on a new file
            fresh += 1
            assert fresh < 6, f"seed {seed}: six runs in a row finished before their kill landed"
            path, outcomes, mid_run = tmp_path / f"killed{fresh}", [], 0
            continue
        outcomes.append(proc.returncode)
        mid_run += proc.returncode == -signal.SIGKILL and after > before
    assert mid_run >= 1, f"seed {seed}: no kill landed mid-run ({outcomes})"

    code, out, err = finish(start(path, prompts_file))
    assert code == 0, f"seed {seed}: {err}"
    stored = re.search(r"stored (\d+) prompts", out)
    assert stored and f"{N_PROMPTS - int(stored[1])} already stored" in out, out
    assert_same_as_reference(path, reference)

    history = runs(path)
    statuses = [status for status, _, _ in history]
    assert statuses[-1] == "completed", f"seed {seed}: {history}"
    assert 1 <= statuses.count("interrupted") <= outcomes.count(-signal.SIGKILL), f"seed {seed}: {history}"
    assert set(statuses) == {"completed", "interrupted"}, f"seed {seed}: {history}"
    for status, message, _ in history:
        assert status == "completed" or message == "the ingest process stopped before finishing"
    assert sum(n for _, _, n in history) == N_PROMPTS, f"seed {seed}: every prompt credited to the run that stored it"


@pytest.mark.slow  # tests/test_interrupts.py interrupts every stage in the default suite
@pytest.mark.parametrize(
    ("signum", "message"),
    [(signal.SIGINT, "stopped by the user (Ctrl-C)"), (signal.SIGTERM, "stopped by SIGTERM")],
)
def test_sigint_and_sigterm_mark_the_run_interrupted_and_resume(
    tmp_path: Path, signum: signal.Signals, message: str
) -> None:
    """The ingest is frozen (SIGSTOP) the moment its first batch is committed, signalled, and thawed, so
    the signal lands mid-run however fast the machine; a run that still finished first (the poll saw its
    first commit late) is retried on a new file with four times the prompts. Ctrl-C and SIGTERM stop at
    once (batches still queued are dropped), exit 130 with one line, and record the run as interrupted;
    the rerun stores the rest."""
    for attempt in range(3):
        n = 64 * 4**attempt
        prompts = tmp_path / f"prompts{attempt}.txt"
        prompts.write_text("\n".join(prompt_lines(n)) + "\n")
        path = tmp_path / f"stopped{attempt}.duckdb"
        proc = start(path, prompts, "--no-backward")
        wait_until_committed(path, proc, 1)
        proc.send_signal(signal.SIGSTOP)
        proc.send_signal(signum)
        proc.send_signal(signal.SIGCONT)
        code, _, err = finish(proc)
        if committed(path) < n:
            break
    assert 0 < committed(path) < n, f"{signum!r}: the signal did not land mid-run ({committed(path)} of {n} stored)"
    assert code == 130, f"{signum!r}: exit {code}, {err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: interrupted"), f"{signum!r}: {err}"
    assert "rerun the same command to resume" in lines[0]
    history = runs(path)
    kept = committed(path)
    assert history[-1] == ("interrupted", message, kept), f"{signum!r}: {history}"

    code, out, err = finish(start(path, prompts, "--no-backward"))
    assert code == 0, err
    assert f"stored {n - kept} prompts" in out and f"{kept} already stored" in out, out
    assert warehouse_rows(path, "SELECT count(*), count(DISTINCT text) FROM prompts") == [(n, n)]
    assert [status for status, _, _ in runs(path)] == ["interrupted", "completed"]


LOCKED = re.compile(
    r"^error: another ingest \(pid \d+\) is writing to .+: wait for it to finish, or pass --wait to queue behind it$"
)


@pytest.mark.slow
def test_two_ingests_at_once_one_succeeds_the_other_fails_cleanly(
    tmp_path: Path, prompts_file: Path, reference: Path
) -> None:
    path = tmp_path / "shared.duckdb"
    first, second = start(path, prompts_file), start(path, prompts_file)
    results = sorted([finish(first), finish(second)])
    (ok_code, ok_out, ok_err), (fail_code, fail_out, fail_err) = results
    assert ok_code == 0, ok_err
    assert f"stored {N_PROMPTS} prompts" in ok_out
    assert fail_code == 2 and fail_out == ""
    assert LOCKED.match(fail_err.strip()) and len(fail_err.strip().splitlines()) == 1, fail_err

    assert_same_as_reference(path, reference)
    assert warehouse_rows(path, "SELECT status FROM runs") == [("completed",)]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until_idle(proc: subprocess.Popen[str], window: float = 1.0, timeout: float = 60.0) -> None:
    """Until `proc` has started up (spent CPU) and then spends none for `window` seconds: it is blocked."""
    deadline = time.monotonic() + timeout
    last = cpu_seconds(proc.pid)
    while time.monotonic() < deadline:
        time.sleep(window)
        assert proc.poll() is None, f"the queued ingest exited ({proc.returncode}): {proc.communicate()}"
        now = cpu_seconds(proc.pid)
        if now > 0.5 and now - last < 0.05 * window:
            return
        last = now
    raise AssertionError("the queued ingest never went idle")


@pytest.mark.slow
def test_wait_queues_behind_a_running_ingest(tmp_path: Path, prompts_file: Path) -> None:
    """The first ingest is frozen (SIGSTOP) after its first commit, holding the warehouse mid-run; a second
    with --wait starts, and goes idle instead of failing or writing. Resumed, the first completes, then the
    second's run starts and commits its own prompts."""
    path = tmp_path / "queued"
    others = tmp_path / "others.txt"
    others.write_text("\n".join(f"Queued prompt {i}" for i in range(4)) + "\n")
    many = tmp_path / "many.txt"  # long enough that the first is still running when it is frozen
    many.write_text("\n".join(prompt_lines(N_PROMPTS * 4)) + "\n")
    first = start(path, many, "--batch-size", "1")
    wait_until_committed(path, first, 1)
    first.send_signal(signal.SIGSTOP)
    try:
        second = start(path, others, "--wait")
        wait_until_idle(second)
    finally:
        first.send_signal(signal.SIGCONT)
    (code1, out1, err1), (code2, out2, err2) = finish(first), finish(second)
    assert code1 == 0, err1
    assert code2 == 0, err2
    assert f"stored {N_PROMPTS * 4} prompts" in out1
    assert "stored 4 prompts" in out2
    history = warehouse_rows(path, "SELECT status, n_prompts, started_at, finished_at FROM runs ORDER BY run_id")
    assert [(status, n) for status, n, _, _ in history] == [("completed", N_PROMPTS * 4), ("completed", 4)], history
    assert history[1][2] >= history[0][3], "the queued run started before the first one finished"
    assert warehouse_rows(path, "SELECT count(*), count(DISTINCT text) FROM prompts") == [(N_PROMPTS * 4 + 4,) * 2]
