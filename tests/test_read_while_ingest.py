"""Reading while an ingest runs: one process ingests 200 prompts, another queries in a loop.

Readers attach the lake read-only per query and see its last committed snapshot; nothing makes them
wait for the writer, and each query must finish within READER_WAIT_S. Every reader query must see whole
prompts only: for each committed prompt, its token
rows and its raw and derived fact rows all match what its token count implies. The test prints the reader's
latencies.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from warehouse import db

ROOT = Path(__file__).resolve().parent.parent
N_PROMPTS = 200
READER_WAIT_S = 10.0  # a reader query that takes longer than this is waiting for the writer
READER_PAUSE_S = 0.005  # between queries, like a dashboard refreshing as fast as it can

# gpt2-tiny: 2 layers, 4 heads, 128 MLP neurons. Per prompt of n tokens, per pass:
#   mlp_post_act 2*128*n rows, attn_qk_probs 2*4*n(n+1)/2 rows (causal pairs), mlp_act_times_grad 2*128*n.
READER = r"""
import json, sys, time
from queries import Warehouse
from warehouse import db
from warehouse.registry import LOCATIONS

path, out, pause = sys.argv[1], sys.argv[2], float(sys.argv[4])
POST_ACT, PROBS = LOCATIONS["mlp.post_act"].dst, LOCATIONS["attn.qk_probs"].dst
CHECK = f'''
SELECT p.prompt_id, p.n_tokens,
       (SELECT count(*) FROM tokens t WHERE t.prompt_id = p.prompt_id) AS tokens,
       (SELECT count(*) FROM activations a WHERE a.prompt_id = p.prompt_id AND a.dst = '{POST_ACT}'
          AND a.pass_type = 'forward') AS mlp_fwd,
       (SELECT count(*) FROM activations a WHERE a.prompt_id = p.prompt_id AND a.dst = '{POST_ACT}'
          AND a.pass_type = 'backward') AS mlp_bwd,
       (SELECT count(*) FROM activations a WHERE a.prompt_id = p.prompt_id AND a.dst = '{PROBS}'
          AND a.pass_type = 'forward') AS attn_fwd,
       (SELECT count(*) FROM mlp_act_times_grad g WHERE g.prompt_id = p.prompt_id) AS atg
FROM prompts p ORDER BY p.prompt_id
'''
latencies, violations, seen, errors = [], [], [], []
wh = None
start = time.monotonic()
while True:
    done = open(path + ".done").read() if __import__("os").path.exists(path + ".done") else None
    t0 = time.perf_counter()
    try:
        if wh is None:
            wh = Warehouse(path)
        rows = wh.sql(CHECK, output="rows")
        if rows:  # the API on the newest committed prompt, too
            N_LAST = rows[-1][0]
            strip = wh.token_attribution(rows[-1][0])
            if strip.num_rows != rows[-1][1] or strip["mlp"].null_count:
                violations.append(("token_attribution", rows[-1][0], strip.num_rows))
    except db.NotAWarehouse:
        if wh is None and time.monotonic() - start < 60:  # the ingest has not created the file yet
            time.sleep(0.05)
            continue
        raise
    except db.WarehouseError as exc:
        errors.append(str(exc))
        continue
    latencies.append(time.perf_counter() - t0)
    for pid, n, tokens, mlp_fwd, mlp_bwd, attn_fwd, atg in rows:
        want = (n, 256 * n, 256 * n, 4 * n * (n + 1), 256 * n)
        if (tokens, mlp_fwd, mlp_bwd, attn_fwd, atg) != want:
            violations.append((pid, n, tokens, mlp_fwd, mlp_bwd, attn_fwd, atg))
    if seen and len(rows) < seen[-1]:
        violations.append(("prompts went backwards", seen[-1], len(rows)))
    seen.append(len(rows))
    if done is not None:
        break
    time.sleep(pause)
idle = []  # the same queries with no writer: what a query costs without waiting
for _ in range(5):
    t0 = time.perf_counter()
    wh.sql(CHECK, output="rows")
    wh.token_attribution(N_LAST)
    idle.append(time.perf_counter() - t0)
out_data = {"latencies": latencies, "idle": idle, "violations": violations, "seen": seen, "errors": errors}
json.dump(out_data, open(out, "w"))
"""


# A writer that reopens the file the moment it closes it, as an ingest on a fast model does.
OPEN_TRANSACTION = r"""
import os, sys, time
from warehouse import db

path, started, stop = sys.argv[1:4]
con = db.connect(path)
con.execute("BEGIN")
con.execute("INSERT INTO prompts (prompt_id, run_id, model_id, prompt_key, text, n_tokens)"
            " VALUES (0, 0, 0, 'k', 'uncommitted', 1)")
open(started, "w").close()
while not os.path.exists(stop):
    time.sleep(0.01)
con.execute("COMMIT")
con.close()
"""


def _prompts(path: Path) -> Path:
    words = ["Paris", "London", "the", "river", "capital", "of", "France", "is", "a", "city", "in", "Europe"]
    lines = [" ".join(words[(i + j) % len(words)] for j in range(3 + i % 6)) + f" {i}" for i in range(N_PROMPTS)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _ingest(db_path: Path, prompts: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "ingest", "--db", str(db_path), "--model", "gpt2-tiny",
         "--prompts", str(prompts), "--batch-size", "4", "--quiet", "--target", " Paris", "--distractor", " London"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _timed_ingest(db_path: Path, prompts: Path) -> float:
    start = time.perf_counter()
    proc = _ingest(db_path, prompts)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    return time.perf_counter() - start


def _run_with_reader(tmp_path: Path, prompts: Path) -> None:
    db_path = tmp_path / "busy.duckdb"
    out = tmp_path / "reader.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(db_path), str(out), str(READER_WAIT_S), str(READER_PAUSE_S)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    busy_s = _timed_ingest(db_path, prompts)
    Path(str(db_path) + ".done").write_text("done")
    reader_output, _ = reader.communicate(timeout=120)
    assert reader.returncode == 0, reader_output
    result = json.loads(out.read_text())

    latencies = sorted(result["latencies"])
    assert not result["errors"], result["errors"][:3]  # no query ran out of its retry bound
    assert not result["violations"], result["violations"][:5]  # never a partial prompt
    # it read while prompts arrived, again and again: opens queue, so the reader gets in between commits
    # (about 25 distinct counts on 2 cores, loaded or not; 5 leaves room for a slow machine)
    assert result["seen"][-1] == N_PROMPTS
    assert len({n for n in result["seen"] if 0 < n < N_PROMPTS}) >= 5, result["seen"]
    assert latencies[-1] < READER_WAIT_S
    print(
        f"\nreader: {len(latencies)} queries while ingesting,"
        f" latency median {statistics.median(latencies) * 1e3:.0f} ms,"
        f" p95 {latencies[int(0.95 * (len(latencies) - 1))] * 1e3:.0f} ms, max {latencies[-1] * 1e3:.0f} ms"
        f" (the same query on the finished file: median {statistics.median(result['idle']) * 1e3:.0f} ms);"
        f" distinct committed-prompt counts seen {len(set(result['seen']))}; ingest {busy_s:.1f} s"
    )


@pytest.mark.slow
def test_readers_see_whole_prompts_while_ingest_runs(tmp_path: Path) -> None:
    _run_with_reader(tmp_path, _prompts(tmp_path / "prompts.txt"))


def test_readers_never_wait_for_a_writer_and_see_only_what_it_committed(tmp_path: Path) -> None:
    """A writer holding a transaction open neither blocks readers nor shows them its rows until it commits."""
    path, started, stop = tmp_path / "w", tmp_path / "started", tmp_path / "stop"
    db.connect(path).close()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writer = subprocess.Popen([sys.executable, "-c", OPEN_TRANSACTION, str(path), str(started), str(stop)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert started.exists(), "the writer never opened its transaction"
        waits, seen = [], []
        for _ in range(10):
            t0 = time.perf_counter()
            with db.connect(path, read_only=True) as con:
                seen.append(con.execute("SELECT count(*) FROM prompts").fetchall()[0][0])
            waits.append(time.perf_counter() - t0)
    finally:
        stop.touch()
        writer.wait(timeout=60)
    assert writer.returncode == 0
    assert seen == [0] * 10
    assert max(waits) < 5.0, waits  # an attach and a count; a wait for the writer would last until `stop`
    with db.connect(path, read_only=True) as con:
        assert con.execute("SELECT text FROM prompts").fetchall() == [("uncommitted",)]
