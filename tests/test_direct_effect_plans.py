"""The direct-effect views read only what they need, as DuckDB's profiler counts it: the stored rows at each
prompt's last token (the join with the prompts reaches the scan, rather than probing every token's rows),
and no weight matrix for a pair whose tokens' factors the warehouse stores (direction_factors, kept at
ingest for every target and distractor), so a pair given at query time costs what an ingested one does.

A random-weight GPT-2 (tests/hf_checkpoints.py), prompts of 1 to 12 tokens (two of one length), three
target/distractor pairs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest

from ingest.prompts import PromptInput
from ingest.worker import IngestOptions, ingest
from queries import Warehouse
from tests.hf_checkpoints import gpt2_checkpoint

PROMPTS = [
    PromptInput("The capital of France is", " Paris", " London"),
    PromptInput("The capital of Italy is", " Rome", " Paris"),
    PromptInput("A", " Rome", " Berlin"),
    PromptInput("When Mary and John went to the store, John gave", " Rome", " Berlin"),
]


@dataclass
class Lake:
    wh: Warehouse
    ids: dict[str, int]  # token text -> id


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    tmp = tmp_path_factory.mktemp("plans")
    checkpoint = gpt2_checkpoint(tmp / "checkpoint").path
    report = ingest(tmp / "lake", PROMPTS, IngestOptions(model=str(checkpoint), progress=False))
    assert report.stored == len(PROMPTS), report
    wh = Warehouse(tmp / "lake")
    words = [" Paris", " London", " Rome", " Berlin"]
    rows = wh.sql("SELECT text, min(token_id) FROM vocab WHERE text IN ? GROUP BY text", [words], output="rows")
    return Lake(wh, dict(rows))


def _operators(node: dict) -> Iterator[dict]:
    yield node
    for child in node.get("children", []):
        yield from _operators(child)


def _rows_read(con: duckdb.DuckDBPyConnection, sql: str, table: str, filter_text: str, tmp: Path) -> tuple[int, int]:
    """Run `sql` under DuckDB's profiler: (rows it answered, rows the scans of `table` whose filters
    mention `filter_text` emitted, summed over such scans)."""
    out = tmp / "profile.json"
    con.execute(f"PRAGMA enable_profiling = 'json'; PRAGMA profiling_output = '{out}'")
    try:
        answered = len(con.execute(sql).fetchall())
    finally:
        con.execute("PRAGMA disable_profiling")
    profile = json.loads(out.read_text())
    read = 0
    found = False
    for op in _operators(profile):
        info = op.get("extra_info") or {}
        if isinstance(info, dict) and info.get("Table") == table and filter_text in json.dumps(info.get("Filters", "")):
            found = True
            read += int(op.get("operator_cardinality", 0))
    assert found, f"no scan of {table} filtered on {filter_text} in the plan of {sql}"
    return answered, read


@pytest.mark.parametrize(
    ("view", "dst", "last_token_only"),
    [
        ("mlp_write_to_final_residual_grad", "mlp_post_act", True),
        ("unflattened_attn_write_to_final_residual_grad", "attn_qk_probs", True),
        ("unflattened_attn_write_to_final_residual_grad", "attn_value", False),  # every key token is read
    ],
)
def test_a_direct_effect_view_reads_only_the_rows_it_needs(
    lake: Lake, view: str, dst: str, last_token_only: bool, tmp_path: Path
) -> None:
    """One prompt's direct effects read that prompt's rows (at its last token, where only those count) and
    no others; two prompts of one length read their last tokens' rows (the join with the prompts reaches
    the scan as a filter on the token)."""
    with lake.wh.session(), lake.wh._connection() as con:
        lengths = con.execute("SELECT prompt_id, n_tokens FROM prompts ORDER BY 1").fetchall()
        by_length: dict[int, list[int]] = {}
        for prompt_id, n_tokens in lengths:
            by_length.setdefault(n_tokens, []).append(prompt_id)
        scopes = [f"= {p}" for p, _ in lengths]
        if last_token_only:
            same = [ids for ids in by_length.values() if len(ids) > 1]
            assert same, "no two prompts of one length"
            scopes += [f"IN ({', '.join(map(str, ids))})" for ids in same]
        for scope in scopes:
            answered, read = _rows_read(
                con, f"SELECT * FROM {view} WHERE prompt_id {scope}", "facts", f"dst='{dst}'", tmp_path
            )
            last = " AND f.token = p.n_tokens - 1" if last_token_only else ""
            needed = con.execute(
                "SELECT count(*) FROM facts f JOIN prompts p USING (prompt_id)"
                f" WHERE f.dst = ? AND p.prompt_id {scope}{last}",
                [dst],
            ).fetchall()[0][0]
            assert answered > 0 and needed > 0
            assert read == needed, f"{view} read {read} {dst} rows of prompts {scope}, {needed} needed"


def test_a_pair_of_stored_tokens_reads_no_weight_matrix(lake: Lake, tmp_path: Path) -> None:
    """direct_effects for a pair never ingested together, both of whose tokens have stored factors, takes
    its factors from direction_factors: its scan of W_out stops at the first chunk (DuckDB stops a join's
    probe whose table is empty), where computing the factors, or hashing W_out, reads all of it."""
    target, distractor = lake.ids[" Rome"], lake.ids[" London"]  # targets and distractors of different prompts
    sql = f"SELECT * FROM direct_effects({target}, {distractor}) WHERE prompt_id = 0"
    with lake.wh.session(), lake.wh._connection() as con:
        answered, read = _rows_read(con, sql, "weights", "location='mlp.to_residual'", tmp_path)
        total = con.execute("SELECT count(*) FROM weights WHERE location = 'mlp.to_residual'").fetchall()[0][0]
        assert answered > 0
        assert read < total, f"direct_effects read all {total} rows of W_out"
