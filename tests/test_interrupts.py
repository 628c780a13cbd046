"""Ctrl-C at any moment: one line, exit 130, and a run the same command resumes.

The signals are real (SIGINT sent to this process) and sent at named points of the ingest by wrapping
the function that runs there, so each lands where it is meant to on any machine: the CLI runs in-process
(the signal reaches Python in the main thread, as in a terminal). Where a library turns the interrupt
into an error of its own (DuckDB's 'Query interrupted'), the signal is sent while its query runs.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner

import cli
from ingest import worker
from tests.test_reliability import cpu_seconds
from warehouse import db, interrupts
from warehouse import summaries as warehouse_summaries
from warehouse import writer as writer_module

N_PROMPTS = 16
RESUMABLE = "error: interrupted: committed work is kept; rerun the same command to resume"
FOREVER = "SELECT count(*) FROM range(1000000000000) t(x) WHERE x % 7 = 3"  # until interrupted


def ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)


@contextmanager
def ctrl_c_within(seconds: float) -> Iterator[None]:
    """Ctrl-C sent from another thread `seconds` into the block (which must still be running then)."""
    sender = threading.Timer(seconds, ctrl_c)
    sender.start()
    try:
        yield
    finally:
        sender.cancel()
        sender.join()


def on_call(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, call: int = 1) -> None:
    """Ctrl-C as `owner.name` is called for the `call`-th time, before it runs (a thread's own signal is
    handled as it returns from os.kill: the interrupt lands there, or in the main thread's next step)."""
    real = getattr(owner, name)
    calls = itertools.count(1)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if next(calls) == call:
            ctrl_c()
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


def ingest(path: Path, prompts: Path) -> Any:
    args = ["ingest", "--db", path, "--model", "gpt2-tiny", "--prompts", prompts, "--batch-size", "2", "--quiet"]
    return CliRunner().invoke(cli.main, [str(a) for a in [*args, "--no-backward"]])


def runs(path: Path) -> list[tuple[str, int, int]]:
    """Each run's status, the prompts it says it stored, and the prompts stored under its id."""
    if not path.exists():
        return []
    con = db.connect(path, read_only=True)
    try:
        return con.execute(
            "SELECT status, n_prompts, (SELECT count(*) FROM prompts p WHERE p.run_id = r.run_id)"
            " FROM runs r ORDER BY run_id"
        ).fetchall()
    finally:
        con.close()


def at_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    on_call(monkeypatch, worker, "load_model")


def inside_duckdb_at_start_up(monkeypatch: pytest.MonkeyPatch, seen: list[BaseException]) -> None:
    """The run's start-up query takes long and Ctrl-C lands inside DuckDB: its 'Query interrupted'."""
    real = writer_module.LakeWriter.committed_keys

    def committed_keys(self: writer_module.LakeWriter, model_id: int) -> set[str]:
        # one DuckDB thread: the writer's connection is not cancelled (interrupts.cancel_on_interrupt), and
        # this query's tasks on other threads would run on without end
        threads = self._con.execute("SELECT current_setting('threads')").fetchall()[0][0]
        self._con.execute("SET threads = 1")
        try:
            with ctrl_c_within(0.5):
                self._con.execute(FOREVER).fetchall()
        except BaseException as exc:
            seen.append(exc)
            raise
        finally:
            self._con.execute(f"SET threads = {threads}")
        return real(self, model_id)

    monkeypatch.setattr(writer_module.LakeWriter, "committed_keys", committed_keys)


def while_the_run_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """In the main thread's transaction that puts the run in the catalog."""
    on_call(monkeypatch, writer_module.LakeWriter, "_start_run")


def mid_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside the second batch's model pass, between layer 0's attention and its MLP."""
    real_run_batch = worker.run_batch
    calls = itertools.count(1)

    def run_batch(device: Any, loaded: Any, *rest: Any) -> Any:
        if next(calls) != 2:
            return real_run_batch(device, loaded, *rest)
        real_mlp = loaded.model._mlp

        def mlp(*args: Any) -> Any:
            ctrl_c()
            return real_mlp(*args)

        loaded.model._mlp = mlp
        try:
            return real_run_batch(device, loaded, *rest)
        finally:
            del loaded.model._mlp

    monkeypatch.setattr(worker, "run_batch", run_batch)


def inside_a_library_callback(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a C library's callback into Python, during the first batch's model pass: the library prints the
    exception the handler raises and drops it (as Numba's compiler cache did while it compiled on a fresh
    machine, and the run then completed), so the run must still stop, at its next step."""
    real_run_batch = worker.run_batch
    calls = itertools.count(1)
    callback = ctypes.CFUNCTYPE(None)(ctrl_c)

    def run_batch(*args: Any) -> Any:
        if next(calls) == 1:
            callback()
        return real_run_batch(*args)

    monkeypatch.setattr(worker, "run_batch", run_batch)


def during_a_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    """As the writer thread commits the second batch."""
    on_call(monkeypatch, writer_module.LakeWriter, "append", call=2)


def during_a_summary_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    """As the writer thread stores the run's summaries inside the second batch's commit (every batch
    flushes here)."""
    monkeypatch.setattr(warehouse_summaries, "FLUSH_TOKENS", 1)
    on_call(monkeypatch, writer_module, "_store_summaries", call=2)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped one
def test_ctrl_c_at_every_stage_of_an_ingest_gives_one_line_and_a_run_the_same_command_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same command, run again after each Ctrl-C, is interrupted at the next stage and resumes the
    work before it; the last run completes. Every interrupted run is recorded as interrupted (never failed
    or left running) with the prompts it committed, and every prompt is stored exactly once."""
    texts = [f"Prompt {i}: the quick brown fox jumps over" for i in range(N_PROMPTS)]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(texts) + "\n")
    path = tmp_path / "w"
    seen: list[BaseException] = []
    stages: list[tuple[str, Callable[[pytest.MonkeyPatch], None]]] = [
        ("model load", at_model_load),
        ("start-up, inside DuckDB", lambda mp: inside_duckdb_at_start_up(mp, seen)),
        ("the run's start", while_the_run_starts),
        ("mid-batch", mid_batch),
        ("inside a library's callback", inside_a_library_callback),
        ("a commit", during_a_commit),
        ("a summary flush", during_a_summary_flush),
    ]
    for stage, arrange in stages:
        before = runs(path)
        with monkeypatch.context() as mp:
            arrange(mp)
            result = ingest(path, prompts)
        assert (result.exit_code, result.stdout, result.stderr.splitlines()) == (130, "", [RESUMABLE]), stage
        after = runs(path)
        print(stage, after)
        if stage != "model load":  # before the warehouse is opened: no run
            assert len(after) == len(before) + 1 and after[-1][0] == "interrupted", f"{stage}: {after}"
        assert all(status == "interrupted" and n == stored for status, n, stored in after), f"{stage}: {after}"
    assert isinstance(seen[0], RuntimeError) and "interrupted" in str(seen[0]), seen  # DuckDB's, mapped

    kept = sum(stored for _, _, stored in runs(path))
    assert kept < N_PROMPTS
    result = ingest(path, prompts)
    assert result.exit_code == 0, result.stderr
    assert f"stored {N_PROMPTS - kept} prompts" in result.stdout and f"{kept} already stored" in result.stdout
    con = db.connect(path, read_only=True)
    stored = con.execute("SELECT text, count(*) FROM prompts GROUP BY text ORDER BY text").fetchall()
    con.close()
    assert stored == sorted((t, 1) for t in texts), "every prompt exactly once"
    assert [status for status, _, _ in runs(path)] == ["interrupted"] * 6 + ["completed"]


def test_ctrl_c_during_a_query_is_one_line(tmp_path: Path) -> None:
    """In a process of its own, as a user runs it: a query cut short in this one would leave DuckDB's
    worker threads running it until its connection is collected, which then waits for them."""
    db.connect(tmp_path / "w").close()  # an empty warehouse
    proc = subprocess.Popen(
        [sys.executable, str(Path(cli.__file__)), "sql", "--db", str(tmp_path / "w"), FOREVER],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a CI runner started in the background ignores SIGINT, and children inherit that: restore it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    started = time.monotonic()
    while time.monotonic() - started < 60 and cpu_seconds(proc.pid) < 3.0:  # imported, opened, querying
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out, err) == (130, "", "error: interrupted\n")


def test_an_interrupt_reported_by_a_library_is_recognised_as_one() -> None:
    """DuckDB's error for a signal that lands in a query, a C extension's SystemError for one that lands
    while it runs (raised from the KeyboardInterrupt, as CPython does), and any error once a signal was
    taken, are interrupts; other errors are not."""
    # one DuckDB thread, and the connection closed here: an interrupted query's tasks on other threads run on,
    # and a connection left to the garbage collector waits for them inside a later test, for ever
    con = duckdb.connect(config={"threads": 1})
    try:
        with pytest.raises(RuntimeError) as caught, interrupts.raised(), ctrl_c_within(0.3):
            con.execute(FOREVER).fetchall()
    finally:
        con.close()
    assert interrupts.reason(caught.value) == interrupts.CTRL_C
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise SystemError("<numba kernel> returned a result with an exception set") from exc
    except SystemError as exc:
        assert interrupts.reason(exc) == interrupts.CTRL_C
    assert interrupts.reason(RuntimeError("Query failed")) is None
    assert interrupts.reason(interrupts.Interrupted(interrupts.SIGTERM)) == interrupts.SIGTERM
    with pytest.raises(interrupts.Interrupted), interrupts.raised():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        finally:  # a clean-up that fails on the way out
            assert interrupts.reason(OSError("closed")) == interrupts.SIGTERM
    assert interrupts.reason(OSError("closed")) is None  # the block is over


def test_a_deferred_block_runs_to_its_end_and_then_raises_the_signal() -> None:
    done = []
    with pytest.raises(KeyboardInterrupt), interrupts.raised():
        with interrupts.deferred():
            ctrl_c()
            done.append("after the signal")
        done.append("after the block")
    assert done == ["after the signal"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


API_QUERY_CUT_SHORT = """
import os, signal, sys, threading
from queries.api import Warehouse


def cut_short(name, w, after):
    threading.Timer(after, os.kill, (os.getpid(), signal.SIGINT)).start()
    try:
        w.sql(sys.argv[2])
    except KeyboardInterrupt:
        print(name, "interrupted", flush=True)
    print(name, w.sql("SELECT 42", output="rows"), flush=True)  # the same object answers next


wh = Warehouse(sys.argv[1])
cut_short("per query", wh, 3.0)  # a Ctrl-C while it connects is as good: a KeyboardInterrupt too
with wh.session() as session:
    for _ in range(3):  # the query's threads, left running, held up the next query on the second round
        cut_short("session", session, 0.5)
print("closed", flush=True)
"""


def test_ctrl_c_during_a_python_api_query_cancels_it(tmp_path: Path) -> None:
    """A researcher's Ctrl-C in a notebook or script: the query stops as a KeyboardInterrupt, DuckDB's
    threads stop running it (left running, they held up the connection's next query for a query without
    end), and the same Warehouse (per-query connections, and a session's one) answers the next query."""
    db.connect(tmp_path / "w").close()
    proc = subprocess.run(
        [sys.executable, "-c", API_QUERY_CUT_SHORT, str(tmp_path / "w"), FOREVER],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=Path(cli.__file__).parent,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    rounds = [f"{name} {line}" for name in ["per query"] + ["session"] * 3 for line in ("interrupted", "[(42,)]")]
    assert proc.stdout.splitlines() == [*rounds, "closed"], proc.stderr
