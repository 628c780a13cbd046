"""The query API against a small warehouse whose every value is written by hand below."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet  # noqa: F401 - pa.parquet in the CLI test
import pytest

from queries import DstNotAvailable, UnknownDst, Warehouse, notes
from warehouse import db, interrupts

ROOT = Path(__file__).resolve().parent.parent

TRICKY = 'O\'Brien said "hi"; DROP TABLE prompts; -- ? $1 %s {x}'
TOKENS = {
    0: ["A", " quick", " brown", " fox", " jumps"],
    1: ["O'Brien", ' said "hi"', "; DROP TABLE prompts; --", " ? $1 %s {x}"],
    2: ["A", " quick", " brown", " fox", " jumps"],
}
RUN_OF = {0: 0, 1: 0, 2: 1}
# mlp_post_act, layer 0: neuron 1 forward values and gradients per token; neuron 0 is -1 with gradient 0.5.
N1_FORWARD = {0: [0.0, 1.0, 3.0, 2.0, 0.5], 1: [5.0, 0.0, 0.0, 0.0], 2: [1.0, 1.0, 1.0, 1.0, 1.0]}
N1_GRAD = {0: [1.0, -1.0, 2.0, 0.0, 4.0], 1: [0.0, 0.0, 0.0, 0.0], 2: [0.0] * 5}


def _fact(
    prompt: int,
    token: int,
    token2: int | None,
    layer: int | None,
    node_type: str,
    node_index: int,
    dst: str,
    pass_type: str,
    value: float,
) -> dict[str, object]:
    return {
        "prompt_id": prompt,
        "token": token,
        "token2": token2,
        "layer": layer,
        "head": None,
        "node_type": node_type,
        "node_index": node_index,
        "dst": dst,
        "pass_type": pass_type,
        "value": value,
    }


def build_hand_warehouse(path: Path) -> Path:
    """Three prompts, two runs; mlp_post_act, attn_qk_probs and resid_post_emb in both passes."""
    facts = []
    for p, toks in TOKENS.items():
        for t in range(len(toks)):
            facts.append(_fact(p, t, None, 0, "mlp_neuron", 1, "mlp_post_act", "forward", N1_FORWARD[p][t]))
            facts.append(_fact(p, t, None, 0, "mlp_neuron", 1, "mlp_post_act", "backward", N1_GRAD[p][t]))
            facts.append(_fact(p, t, None, 0, "mlp_neuron", 0, "mlp_post_act", "forward", -1.0))
            facts.append(_fact(p, t, None, 0, "mlp_neuron", 0, "mlp_post_act", "backward", 0.5))
            for k in range(t + 1):  # uniform attention of head 0, gradient 1: p * grad sums to 1 per query
                facts.append(_fact(p, t, k, 0, "attention_head", 0, "attn_qk_probs", "forward", 1.0 / (t + 1)))
                facts.append(_fact(p, t, k, 0, "attention_head", 0, "attn_qk_probs", "backward", 1.0))
            for c, (fwd, bwd) in enumerate([(float(t), 1.0), (1.0, 1.0)]):  # e . grad e = t + 1
                facts.append(
                    _fact(p, t, None, None, "residual_stream_channel", c, "resid_post_embedding", "forward", fwd)
                )
                facts.append(
                    _fact(p, t, None, None, "residual_stream_channel", c, "resid_post_embedding", "backward", bwd)
                )
    con = db.connect(path)
    try:
        con.execute(
            "INSERT INTO models (model_id, name, family, checkpoint_hash, n_layers, d_model, n_heads, n_kv_heads,"
            " d_head, d_mlp, vocab_size, n_ctx, norm) VALUES (0, 'hand', 'gpt2', 'h', 1, 2, 1, 1, 2, 2, 10, 8,"
            " 'layernorm')"
        )
        for run in (0, 1):
            con.execute(
                "INSERT INTO runs (run_id, model_id, objective, locations, software_version, device, dtype,"
                " precision, prepend_bos, special_tokens, started_at, finished_at, status, n_prompts)"
                " VALUES (?, 0, 'logit_diff', ['mlp.post_act:forward'], 'test', 'cpu', 'float32', 'float32', false,"
                " 'special', ?, ?, 'completed', ?)",
                [run, datetime(2026, 1, 1), datetime(2026, 1, 1, 0, 0, 2), 2 - run],
            )
        for p, toks in TOKENS.items():
            text = TRICKY if p == 1 else "".join(toks)
            con.execute(
                "INSERT INTO prompts (prompt_id, run_id, model_id, prompt_key, text, n_tokens)"
                " VALUES (?, ?, 0, ?, ?, ?)",
                [p, RUN_OF[p], f"key{p}", text, len(toks)],
            )
            for i, tok in enumerate(toks):
                con.execute("INSERT INTO tokens VALUES (?, ?, ?, ?, ?)", [p, i, i, tok, tok.encode()])
        rows = pa.Table.from_pylist(facts)
        con.register("hand_facts", rows)
        con.execute(
            "INSERT INTO facts SELECT prompt_id::INTEGER, token::SMALLINT, token2::SMALLINT, layer::SMALLINT,"
            " head::SMALLINT, any_value(node_type), node_index::INTEGER, dst,"
            " any_value(value) FILTER (pass_type = 'forward')::FLOAT,"
            " any_value(value) FILTER (pass_type = 'backward')::FLOAT"
            " FROM hand_facts GROUP BY prompt_id, token, token2, layer, head, node_index, dst"
            " ORDER BY token2 IS NULL, layer IS NULL, dst, layer, prompt_id, token, token2, node_index"
        )
    finally:
        con.close()
    return path


@pytest.fixture(scope="module")
def hand_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_hand_warehouse(tmp_path_factory.mktemp("hand") / "hand")


@pytest.fixture
def wh(hand_db: Path) -> Warehouse:
    return Warehouse(hand_db)


def test_sql_outputs_and_bound_parameters(wh: Warehouse) -> None:
    query = "SELECT prompt_id, text FROM prompts WHERE text = ?"
    assert wh.sql(query, [TRICKY], output="rows") == [(1, TRICKY)]
    assert wh.sql(query, [TRICKY]).to_pylist() == [{"prompt_id": 1, "text": TRICKY}]
    assert wh.sql("SELECT text FROM prompts WHERE prompt_id = $id", {"id": 1}, output="pandas")["text"][0] == TRICKY
    # the prompts table survived the text above
    assert wh.sql("SELECT count(*) FROM prompts", output="rows") == [(3,)]
    assert wh.sql("SELECT string_agg(text, '' ORDER BY token) FROM tokens WHERE prompt_id = 1", output="rows") == [
        (TRICKY,)
    ]


def test_read_only_warehouse_refuses_writes(wh: Warehouse) -> None:
    with pytest.raises(db.WarehouseError, match="read-only|read only"):
        wh.sql("DELETE FROM prompts")


def test_unknown_and_unavailable_dst_errors(wh: Warehouse) -> None:
    with pytest.raises(UnknownDst, match="did you mean mlp_post_act"):
        wh.top_examples("mlp_post_ac", 0, 1)
    with pytest.raises(UnknownDst):
        wh.node_stats("x'; DROP TABLE prompts; --", 0, 1)
    with pytest.raises(db.WarehouseError, match="pass type"):
        wh.node_stats("mlp_post_act", 0, 1, pass_type="sideways")


def test_top_examples_context_and_edges(wh: Warehouse) -> None:
    table = wh.top_examples("mlp_post_act", 0, 1, k=3, context=1)
    rows = table.select(["prompt_id", "token", "value", "left_context", "token_text", "right_context"]).to_pylist()
    assert rows == [
        {
            "prompt_id": 1,
            "token": 0,
            "value": 5.0,
            "left_context": "",
            "token_text": "O'Brien",
            "right_context": ' said "hi"',
        },  # fmt: skip
        {
            "prompt_id": 0,
            "token": 2,
            "value": 3.0,
            "left_context": " quick",
            "token_text": " brown",
            "right_context": " fox",
        },  # fmt: skip
        {
            "prompt_id": 0,
            "token": 3,
            "value": 2.0,
            "left_context": " brown",
            "token_text": " fox",
            "right_context": " jumps",
        },  # fmt: skip
    ]
    assert table["context_text"].to_pylist()[0] == '[[O\'Brien]] said "hi"'
    # right edge, a window wider than the prompt, and the lowest values
    tail = wh.top_examples("mlp_post_act", 0, 1, k=1, context=10, bottom=True, run_id=0)
    assert tail["context_text"].to_pylist() == ["[[A]] quick brown fox jumps"]
    edge = wh.top_examples("mlp_post_act", 0, 1, k=10, context=2)
    last = [r for r in edge.to_pylist() if r["prompt_id"] == 0 and r["token"] == 4][0]
    assert last["context_text"] == " brown fox[[ jumps]]" and last["right_context"] == ""
    # attention nodes mark the attended-to token too
    attn = wh.top_examples("attn_qk_probs", 0, 0, k=1, context=3)
    assert attn["value"].to_pylist() == [1.0] and attn["context_text"][0].as_py().startswith("[[")


def test_top_examples_marks_key_token(wh: Warehouse) -> None:
    table = wh.top_examples("attn_qk_probs", 0, 0, k=20, context=3)
    row = [r for r in table.to_pylist() if (r["prompt_id"], r["token"], r["token2"]) == (0, 2, 1)][0]
    assert row["context_text"] == "A<< quick>>[[ brown]] fox jumps"
    assert row["token2_text"] == " quick"


def test_node_stats(wh: Warehouse) -> None:
    stats = wh.node_stats("mlp_post_act", 0, 1, bins=5)
    s = stats.summary.to_pylist()[0]
    assert s["count"] == 14
    assert s["mean"] == pytest.approx(16.5 / 14)
    assert (s["min"], s["max"]) == (0.0, 5.0)
    assert s["frac_nonzero"] == pytest.approx(10 / 14)
    assert s["p50"] == pytest.approx(1.0)
    hist = stats.histogram.to_pylist()
    assert [h["count"] for h in hist] == [5, 6, 1, 1, 1]
    assert hist[0]["bin_low"] == 0.0 and hist[-1]["bin_high"] == pytest.approx(5.0)
    only_run_1 = wh.node_stats("mlp_post_act", 0, 1, run_id=1, bins=3)
    assert only_run_1.summary["count"][0].as_py() == 5
    assert [h["count"] for h in only_run_1.histogram.to_pylist()] == [5, 0, 0]  # constant values: one bin
    empty = wh.node_stats("mlp_post_act", 0, 99)
    assert empty.summary["count"][0].as_py() == 0 and sum(empty.histogram["count"].to_pylist()) == 0


def test_token_attribution(wh: Warehouse) -> None:
    table = wh.token_attribution(0)
    assert table["token_text"].to_pylist() == TOKENS[0]
    assert table["mlp"].to_pylist() == pytest.approx([-0.5, -1.5, 5.5, -0.5, 1.5])
    assert table["attn"].to_pylist() == pytest.approx([1.0] * 5)
    assert table["embedding"].to_pylist() == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0])
    one = wh.token_attribution(0, dst="mlp_post_act")
    assert one["value"].to_pylist() == pytest.approx([-1.0, 0.0, 2.0, 1.0, -0.5])
    with pytest.raises(db.WarehouseError, match="no prompt with id 42"):
        wh.token_attribution(42)


def test_top_nodes_union_of_top_and_bottom(wh: Warehouse) -> None:
    table = wh.top_nodes(0, k=2)
    got = [(r["side"], r["node_type"], r["token"], r["token2"], r["node_index"]) for r in table.to_pylist()]
    assert got == [
        ("top", "mlp_neuron", 2, None, 1),
        ("top", "mlp_neuron", 4, None, 1),
        ("bottom", "mlp_neuron", 0, None, 0),  # -0.5 ties: the first node in key order
        ("bottom", "mlp_neuron", 1, None, 1),
    ]
    assert table["act_times_grad"].to_pylist() == pytest.approx([6.0, 2.0, -0.5, -1.0])
    assert table["activation"].to_pylist() == pytest.approx([3.0, 0.5, -1.0, 1.0])
    assert table["token_text"].to_pylist() == [" brown", " jumps", "A", " quick"]
    assert set(table.column_names) >= {"activation", "write_norm", "direct_effect", "act_times_grad"}
    # hand rows carry no weights: the weight-derived columns are NULL and a note says why
    assert table["write_norm"].null_count == table.num_rows
    assert any(n.startswith("write_norm") for n in notes(table))


def test_top_nodes_by_one_dst_and_small_prompts(wh: Warehouse) -> None:
    table = wh.top_nodes(0, "attn_qk_probs", k=1)
    assert table["node_type"].to_pylist() == ["attention_head", "attention_head"]
    assert table["activation"].to_pylist() == pytest.approx([1.0, 0.2])
    everything = wh.top_nodes(1, "mlp_post_act", k=100)  # top and bottom overlap: each node once
    assert everything.num_rows == 8
    other = wh.top_nodes(0, "resid_post_embedding", k=1)  # outside the node table: ranked on its own
    assert other["value"].to_pylist() == [4.0, 0.0]
    with pytest.raises(UnknownDst):
        wh.top_nodes(0, "activations")


def test_compare_prompts(wh: Warehouse) -> None:
    table = wh.compare(0, 2, "mlp_post_act", k=3)
    assert [(r["token"], r["node_index"], r["diff"]) for r in table.to_pylist()] == [
        (2, 1, -2.0),
        (0, 1, 1.0),
        (3, 1, -1.0),
    ]
    last = wh.compare(0, 1, "mlp_post_act", k=None, align="last")
    assert {(r["token"], r["node_index"]): r["diff"] for r in last.to_pylist()} == {(0, 1): -0.5, (0, 0): 0.0}
    ragged = wh.compare(0, 1, "mlp_post_act", k=None)  # prompt 1 is shorter: token 4 only in prompt 0
    row = [r for r in ragged.to_pylist() if r["token"] == 4 and r["node_index"] == 1][0]
    assert row["value_b"] is None and row["value_a"] == 0.5


def test_compare_runs(wh: Warehouse) -> None:
    table = wh.compare_runs(0, 1, "mlp_post_act")
    rows = {r["node_index"]: r for r in table.to_pylist()}
    assert rows[1]["mean_a"] == pytest.approx(1.3) and rows[1]["mean_b"] == pytest.approx(1.0)
    assert (rows[1]["n_a"], rows[1]["n_b"]) == (5, 5)  # only the prompt present in both runs
    unmatched = wh.compare_runs(0, 1, "mlp_post_act", matched=False)
    assert {r["node_index"]: r["n_a"] for r in unmatched.to_pylist()}[1] == 9
    with pytest.raises(db.WarehouseError, match="no run with id 7"):
        wh.compare_runs(0, 7, "mlp_post_act")


def test_dashboard_views(wh: Warehouse) -> None:
    runs = wh.sql("SELECT run_id, prompts, tokens, n_rows, seconds FROM dash_rows_per_run ORDER BY run_id")
    assert runs.to_pylist()[1] == {"run_id": 1, "prompts": 1, "tokens": 5, "n_rows": 70, "seconds": 2.0}
    top = wh.sql("SELECT * FROM dash_top_nodes WHERE prompt_id = 0 ORDER BY act_times_grad DESC")
    assert top["act_times_grad"].to_pylist()[:2] == pytest.approx([6.0, 2.0])
    profile = wh.sql(
        "SELECT n, mean, max_value FROM dash_node_profile WHERE dst = ? AND pass_type = 'forward'"
        " AND layer = 0 AND node_index = 1",
        ["mlp_post_act"],
        output="rows",
    )
    assert profile == [(14, pytest.approx(16.5 / 14), 5.0)]


def test_session_reuses_one_connection(wh: Warehouse) -> None:
    with wh.session():
        first = wh.top_nodes(0, k=1)
        second = wh.token_attribution(0)
    assert first.num_rows == 2 and second.num_rows == 5


def _commit_meta_row(path: Path) -> None:
    """Commit one `meta` row ('added') through a read-write connection of another Warehouse's lake."""
    writer = db.connect(path)
    try:
        writer.execute("INSERT INTO meta VALUES ('added', '1')")
    finally:
        writer.close()


def test_calls_see_commits_made_between_them_on_cancellable_connections(tmp_path: Path) -> None:
    """A commit another connection made between two calls of one Warehouse shows in the second; each call's
    connection is one that Ctrl-C cancels."""
    path = build_hand_warehouse(tmp_path / "hand")
    wh = Warehouse(path)
    count = "SELECT count(*) FROM meta WHERE key = 'added'"
    assert wh.sql(count, output="rows") == [(0,)]
    _commit_meta_row(path)
    assert wh.sql(count, output="rows") == [(1,)]
    with wh._connection() as con:
        assert con in interrupts._cancellable


def test_a_session_belongs_to_its_thread_and_a_reader_reads_every_row_in_it(wh: Warehouse) -> None:
    """Inside a session, a call made while a reader streams does not end the reader's result, and another
    thread's calls do not run on the session's connection (a DuckDB connection runs one query at a time)."""
    import threading

    seen: list[object] = []
    with wh.session():
        with wh.sql_reader("SELECT i FROM range(100000) t(i)", batch_size=1000) as reader:
            first = reader.read_next_batch()
            assert wh.prompts().num_rows == 3
            rest = reader.read_all()
        assert first.num_rows + rest.num_rows == 100000
        worker = threading.Thread(target=lambda: seen.append(wh._session))
        worker.start()
        worker.join()
        assert wh._session is not None
    assert seen == [None]


def test_a_warehouse_pickles_as_its_path(wh: Warehouse) -> None:
    """For multiprocessing: the copy opens its own connections."""
    import pickle

    with wh.session():
        copy = pickle.loads(pickle.dumps(wh))
    assert (copy.path, copy.read_only, copy._session) == (wh.path, wh.read_only, None)
    assert copy.prompts().num_rows == 3


def test_a_lake_made_anew_at_the_same_path_is_read_anew(tmp_path: Path) -> None:
    """After the folder is deleted and a new lake made there, the Warehouse's next call reads the new one (never
    the old catalog's rows), and a deleted one gets the usual one line."""
    import shutil

    path = build_hand_warehouse(tmp_path / "hand")
    wh = Warehouse(path)
    count = "SELECT count(*) FROM meta WHERE key = 'added'"
    assert wh.sql(count, output="rows") == [(0,)]
    shutil.rmtree(path)
    with pytest.raises(db.NotAWarehouse, match="holds no warehouse yet"):
        wh.sql(count)
    build_hand_warehouse(path)
    _commit_meta_row(path)
    assert wh.sql(count, output="rows") == [(1,)]


def test_missing_file_and_prompt(tmp_path: Path) -> None:
    with pytest.raises(db.NotAWarehouse):
        Warehouse(tmp_path / "nope.duckdb")


def test_dsts_lists_availability(wh: Warehouse) -> None:
    dsts = {r["dst"]: r for r in wh.dsts().to_pylist()}
    assert dsts["mlp_post_act"]["available"] and dsts["mlp_post_act"]["kind"] == "raw"
    assert not dsts["resid_post_mlp"]["available"]


@pytest.mark.slow
def test_unavailable_derived_dst_is_a_clear_error(hand_db: Path, tmp_path: Path) -> None:
    """A warehouse last written by an actwh with fewer views answers the others with one line."""
    import shutil

    copy = tmp_path / "older"
    shutil.copytree(hand_db, copy)
    derived = [
        d
        for d in db.dst_names()
        if d not in {r["dst"] for r in Warehouse(copy).dsts().to_pylist() if r["kind"] == "raw"}
    ]
    with db.connect(copy) as con:
        con.execute("CREATE OR REPLACE VIEW scalars AS SELECT * FROM activations")
        con.execute(f"DROP VIEW {derived[0]}")  # a name from db.dst_names(), i.e. a view file of ours
    with pytest.raises(DstNotAvailable, match="no view"):
        Warehouse(copy).node_stats(derived[0], 0, 0)


def test_cli_reading_commands(hand_db: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cli import main

    runner = CliRunner()
    db_arg = ["--db", str(hand_db)]
    top = runner.invoke(main, ["top", *db_arg, "--prompt-id", "0", "-k", "2"])
    assert top.exit_code == 0, top.output
    assert "act_times_grad" in top.output and " brown" in top.output
    header = top.output.splitlines()[0]
    assert header.startswith("prompt 0: top and bottom 2 nodes") and "write_norm is signed" in header
    examples = runner.invoke(
        main,
        [
            *[
                "examples",
                "--dst",
                "mlp_post_act",
                "--layer",
                "0",
                "--node",
                "1",
                "-k",
                "1",
                "--context",
                "1",
                "--skip-first",
                "0",
            ],
            *db_arg,
        ],
    )
    assert examples.exit_code == 0 and "[[O'Brien]]" in examples.output
    stats = runner.invoke(main, ["node-stats", *db_arg, "--dst", "mlp_post_act", "--layer", "0", "--node", "1"])
    assert stats.exit_code == 0 and "frac_nonzero" in stats.output and "bin_low" in stats.output
    prompt = runner.invoke(main, ["prompt", *db_arg, "--prompt-id", "1", "--format", "csv"])
    assert prompt.exit_code == 0 and prompt.output.splitlines()[0] == '"token","token_text","embedding","attn","mlp"'
    out = tmp_path / "top.parquet"
    parquet = runner.invoke(main, ["top", *db_arg, "--prompt-id", "0", "--format", "parquet", "--output", str(out)])
    assert parquet.exit_code == 0 and pa.parquet.read_table(out).num_rows == 20
    refused = runner.invoke(main, ["top", *db_arg, "--prompt-id", "0", "--format", "parquet"])
    assert refused.exit_code == 2 and "--output" in refused.output
    bad = runner.invoke(main, ["examples", *db_arg, "--dst", "mlp_post_ac", "--layer", "0", "--node", "1"])
    assert bad.exit_code == 2 and "unknown dst 'mlp_post_ac'" in bad.output


def test_cli_reading_commands_start_without_torch() -> None:
    """Only `actwh ingest` runs a model; importing torch would add most of a second to every query."""
    code = "import sys, cli, queries; sys.exit(sorted({'torch', 'sqlalchemy'} & set(sys.modules)) != [])"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False).returncode == 0


def test_cli_plots(hand_db: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from click.testing import CliRunner

    from cli import main

    runner = CliRunner()
    db_arg = ["--db", str(hand_db)]
    for args, name in [
        (["top", "--prompt-id", "0"], "top.png"),
        (["node-stats", "--dst", "mlp_post_act", "--layer", "0", "--node", "1"], "hist.png"),
        (["prompt", "--prompt-id", "1"], "strip.png"),  # token text with $ and quotes
    ]:
        result = runner.invoke(main, [*args, *db_arg, "--plot", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_ingested_prompt_with_quotes_and_sql_round_trips(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cli import main

    path = tmp_path / "tricky.duckdb"
    text = "Robert'); DROP TABLE prompts;-- said \"it's\" ? $1 %s"
    result = CliRunner().invoke(
        main, ["ingest", "--db", str(path), "--model", "gpt2-tiny", "--quiet", "--prompt", text]
    )
    assert result.exit_code == 0, result.output
    wh = Warehouse(path)
    [(prompt_id, n_tokens)] = wh.sql("SELECT prompt_id, n_tokens FROM prompts WHERE text = ?", [text], output="rows")
    strip = wh.token_attribution(prompt_id, dst="mlp_post_act")
    assert "".join(strip["token_text"].to_pylist()) == text and strip.num_rows == n_tokens
    quote_token = [t for t in strip["token_text"].to_pylist() if "'" in t][0]
    found = wh.sql("SELECT count(*) FROM tokens WHERE text = ? AND prompt_id = ?", [quote_token, prompt_id], "rows")
    assert found[0][0] >= 1
    examples = wh.top_examples("mlp_post_act", 0, 0, k=n_tokens, context=n_tokens)
    assert all(row.replace("[[", "").replace("]]", "") == text for row in examples["context_text"].to_pylist())
