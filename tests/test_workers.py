"""Many ingest workers on one PostgreSQL-catalog warehouse: 4 worker processes store every prompt exactly
once with the values one worker stores; a reader polling meanwhile never sees part of a prompt; a worker
SIGKILLed mid-run and rerun, next to the same shard started twice and while compaction runs in a loop,
still leaves every prompt once with one worker's values; a writer opening the warehouse never marks a
live worker's run interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner

from cli import main
from ingest.workers import parse_shard, take_shard
from tests.batching import assert_tables_match
from warehouse import db
from warehouse.maintenance import compact, statistics_problems
from warehouse.registry import LOCATIONS
from warehouse.writer import LakeWriter

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("red", "green", "blue", "north", "south", "east", "west", "cat", "dog", "bird", "the", "of", "and")
POST_ACT = LOCATIONS["mlp.post_act"].dst
# gpt2-tiny: 2 layers of 128 MLP neurons, so a prompt of n tokens has 256 n forward mlp_post_act rows.
PARTIAL = f"""
SELECT (SELECT count(*) FROM prompts p
        WHERE p.n_tokens <> (SELECT count(*) FROM tokens t WHERE t.prompt_id = p.prompt_id)
           OR 256 * p.n_tokens <> (SELECT count(*) FROM activations a WHERE a.prompt_id = p.prompt_id
                                   AND a.dst = '{POST_ACT}' AND a.pass_type = 'forward'))
     + (SELECT count(*) FROM tokens WHERE prompt_id NOT IN (SELECT prompt_id FROM prompts))
     + (SELECT count(*) FROM facts WHERE prompt_id NOT IN (SELECT prompt_id FROM prompts))
"""
ONCE = "SELECT count(*), count(DISTINCT prompt_key), count(DISTINCT prompt_id) FROM prompts"
# Every stored value, keyed by what does not depend on which worker stored it or when.
FACTS = """
SELECT p.prompt_key, f.* EXCLUDE (prompt_id) FROM facts f JOIN prompts p USING (prompt_id) ORDER BY ALL
"""
MODEL_ROWS = {
    "tokens": "SELECT p.prompt_key, t.* EXCLUDE (prompt_id) FROM tokens t JOIN prompts p USING (prompt_id) "
    "ORDER BY ALL",
    "prompts": "SELECT * EXCLUDE (prompt_id, run_id) FROM prompts ORDER BY ALL",
    "direction_factors": "SELECT * FROM direction_factors ORDER BY ALL",
    "weights": "SELECT * FROM weights ORDER BY ALL",
}


def _assert_one_workers_values(many: str, single: Path) -> None:
    """The same rows as one worker stored with its own batches, values within the batching bound of their
    tensor (tests/batching.py); the model's rows identical."""
    facts = _table(many, FACTS)
    assert facts.num_rows > 0
    assert_tables_match(facts, _table(single, FACTS), ["forward", "backward"], ["prompt_key", "dst", "layer"])
    for table, sql in MODEL_ROWS.items():
        got, want = _table(many, sql), _table(single, sql)
        if table == "prompts":  # the objective is computed from the batch's logits
            assert_tables_match(got, want, ["objective"], [])
        else:
            assert got.equals(want), table


def _prompt_file(path: Path, n: int) -> Path:
    """n prompts of 3 to 9 words; every third has a target, the same few targets across shards (their
    factor rows must still be stored once)."""
    lines = []
    for i in range(n):
        text = " ".join(WORDS[(i * 5 + j * 3) % len(WORDS)] for j in range(3 + i % 7))
        lines.append(json.dumps({"prompt": text, "target": [" the", " and"][i % 2]}) if i % 3 == 0 else text)
    path.write_text("\n".join(lines) + "\n")
    return path


def _ingest_args(db_arg: str, prompts: Path, *extra: str) -> list[str]:
    return ["ingest", "--db", db_arg, "--model", "gpt2-tiny", "--prompts", str(prompts), "--quiet", *extra]


def _rows(db_arg: str | Path, sql: str) -> list[tuple]:
    with db.connect(db_arg, read_only=True) as con:
        return con.execute(sql).fetchall()


def _table(db_arg: str | Path, sql: str) -> pa.Table:
    with db.connect(db_arg, read_only=True) as con:
        return con.execute(sql).to_arrow_table()


class _Reader(threading.Thread):
    """Polls the warehouse through one held connection, recording any partial prompt it sees."""

    def __init__(self, db_arg: str) -> None:
        super().__init__(daemon=True)
        self.db_arg, self.stop, self.polls, self.partial = db_arg, threading.Event(), 0, []

    def run(self) -> None:
        con = None
        while not self.stop.is_set():
            try:
                con = con or db.connect(self.db_arg, read_only=True)
            except db.NotAWarehouse:  # the workers have not created it yet
                time.sleep(0.2)
                continue
            (bad,) = con.execute(PARTIAL).fetchall()[0]
            total, keys, ids = con.execute(ONCE).fetchall()[0]
            if bad or not total == keys == ids:
                self.partial.append((bad, total, keys, ids))
            self.polls += 1
            time.sleep(0.1)
        if con is not None:
            con.close()


def test_shards_split_deterministically() -> None:
    assert parse_shard("2/4") == (2, 4)
    assert [list(take_shard(range(10), i, 4)) for i in range(1, 5)] == [[0, 4, 8], [1, 5, 9], [2, 6], [3, 7]]
    for bad in ("0/4", "5/4", "4", "a/b"):
        try:
            parse_shard(bad)
        except ValueError as exc:
            assert "I/N" in str(exc)
        else:
            raise AssertionError(f"{bad} accepted")


@pytest.mark.slow
def test_four_workers_store_every_prompt_once_with_one_workers_values(pg_catalog: str, tmp_path: Path) -> None:
    prompts = _prompt_file(tmp_path / "prompts.jsonl", 16)
    reader = _Reader(pg_catalog)
    reader.start()
    args = _ingest_args(pg_catalog, prompts, "--data-path", str(tmp_path / "shared"), "--batch-size", "2")
    result = CliRunner().invoke(main, [*args, "--workers", "4"])
    reader.stop.set()
    reader.join()
    assert result.exit_code == 0, result.output
    assert [line.split(":")[0] for line in result.output.splitlines()] == [f"worker {i}/4" for i in range(1, 5)]
    assert reader.polls > 0 and reader.partial == [], reader.partial

    single = tmp_path / "single"
    assert CliRunner().invoke(main, _ingest_args(str(single), prompts)).exit_code == 0
    assert _rows(pg_catalog, ONCE) == [(16, 16, 16)]
    assert _rows(pg_catalog, "SELECT min(prompt_id), max(prompt_id) FROM prompts") == [(0, 15)]
    assert _rows(pg_catalog, "SELECT count(*), count(DISTINCT run_id) FROM runs WHERE status = 'completed'") == [(4, 4)]
    _assert_one_workers_values(pg_catalog, single)
    _assert_one_pool_of_each_nodes_best_examples(pg_catalog)


def _assert_one_pool_of_each_nodes_best_examples(catalog: str) -> None:
    """The workers' summaries, merged as each finished (and by compact where two finished side by side),
    are one pool holding each node's K best examples of every stored row, in the queries' order."""
    from tests.test_summaries import ROWS
    from warehouse.summaries import EXAMPLES_K

    compact(catalog)
    assert _rows(catalog, "SELECT count(DISTINCT run_id) FROM node_examples") == [(1,)]
    example = "dst, pass_type, layer, head, node_type, node_index, first_token, side, prompt_id, token, token2, value"
    best = _rows(
        catalog,
        f"SELECT {example} FROM (SELECT *, unnest(['top', 'bottom']) AS side FROM ({ROWS})) QUALIFY row_number()"
        " OVER (PARTITION BY dst, pass_type, layer, head, node_type, node_index, first_token, side ORDER BY"
        f" CASE WHEN side = 'top' THEN -value ELSE value END, prompt_id, token, token2) <= {EXAMPLES_K}",
    )
    assert sorted(_rows(catalog, f"SELECT {example} FROM node_examples")) == sorted(best)


@pytest.mark.slow
def test_a_killed_worker_rerun_beside_a_shard_started_twice_under_compaction_stores_every_prompt_once(
    pg_catalog: str, tmp_path: Path
) -> None:
    prompts = _prompt_file(tmp_path / "prompts.txt", 12)
    args = _ingest_args(pg_catalog, prompts, "--batch-size", "1", "--data-path", str(tmp_path / "shared"))

    def worker(shard: str) -> subprocess.Popen[str]:
        command = [sys.executable, str(ROOT / "cli.py"), *args, "--shard", shard]
        return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    killed = worker("1/2")
    deadline = time.monotonic() + 120
    committed = 0
    while committed == 0 and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            committed = _rows(pg_catalog, "SELECT count(*) FROM prompts")[0][0]
        except db.NotAWarehouse:
            continue
    assert killed.poll() is None, "the worker finished before it could be killed: " + killed.communicate()[1]
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    killed_run = _rows(pg_catalog, "SELECT run_id, status FROM runs")
    assert len(killed_run) == 1 and killed_run[0][1] == "running" and 0 < committed < 6

    # The same shard twice at once, and the other shard; while they run, another writer's recovery must
    # leave their runs alone, and compaction runs in a loop.
    workers = [worker("1/2"), worker("1/2"), worker("2/2")]
    live: list[int] = []
    while not live and any(w.poll() is None for w in workers):
        time.sleep(0.2)
        running = _rows(pg_catalog, "SELECT run_id FROM runs WHERE status = 'running'")
        live = [run_id for (run_id,) in running if run_id != killed_run[0][0]]
    assert live, "no worker run was seen running"
    with LakeWriter(pg_catalog):
        pass
    after = _rows(pg_catalog, f"SELECT status FROM runs WHERE list_contains({live}, run_id)")
    assert "interrupted" not in {status for (status,) in after}
    compactions = []
    while any(w.poll() is None for w in workers):
        compactions.append(compact(pg_catalog))
    for w in workers:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
    assert len(compactions) >= 2 and any(before > after for before, after in compactions), compactions

    statuses = dict(_rows(pg_catalog, "SELECT run_id, status FROM runs"))
    assert statuses.pop(killed_run[0][0]) == "interrupted"
    assert set(statuses.values()) == {"completed"} and len(statuses) == 3, statuses
    assert _rows(pg_catalog, ONCE) == [(12, 12, 12)]
    assert _rows(pg_catalog, PARTIAL) == [(0,)]
    assert _rows(pg_catalog, "SELECT sum(n_prompts) FROM runs") == [(12,)]
    single = tmp_path / "single"
    assert CliRunner().invoke(main, _ingest_args(str(single), prompts)).exit_code == 0
    _assert_one_workers_values(pg_catalog, single)
    with db.connect(pg_catalog, read_only=True) as con:
        assert statistics_problems(con) == []
