"""The dst catalogue: every view documents itself, and `actwh dsts` prints the whole list."""

from __future__ import annotations

from click.testing import CliRunner

from cli import main
from queries.catalog import dst_catalog, view_header
from warehouse import db, registry


def test_every_view_file_has_a_complete_header() -> None:
    node_types = {n.value for n in registry.NodeType}
    for path in db.derived_view_files():
        head = view_header(path)
        assert head.get("dst") == path.stem, path
        assert head.get("node_type") in node_types, path
        for field in ("needs", "formula", "description"):
            assert head.get(field), f"{path.name} lacks '-- {field}:'"


def test_catalogue_lists_raw_and_derived_dsts_once() -> None:
    names = [e.dst for e in dst_catalog()]
    assert len(names) == len(set(names))
    assert set(names) == set(db.dst_names())
    assert {e.kind for e in dst_catalog() if e.dst in registry.LOCATION_BY_DST} == {"raw"}


def test_dsts_command_prints_every_dst() -> None:
    result = CliRunner().invoke(main, ["dsts", "--format", "csv"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].replace('"', "").split(",")[:4] == ["dst", "kind", "node_type", "needs"]
    assert len(lines) == 1 + len(db.dst_names())
    assert any(line.startswith('"mlp_write_to_final_residual_grad","derived","mlp_neuron"') for line in lines)


def test_scalars_keeps_the_fact_table_column_types(tmp_path) -> None:  # noqa: ANN001
    """Every derived view returns the long format's column types, so `scalars` reads like `activations`."""
    con = db.connect(tmp_path / "empty")
    try:
        types = {r[0]: r[1] for r in con.execute("DESCRIBE scalars").fetchall()}
        facts = {r[0]: r[1] for r in con.execute("DESCRIBE activations").fetchall()}
    finally:
        con.close()
    # the flattened attention views index token pairs q(q+1)/2 + k, past SMALLINT for long prompts
    assert types == {**facts, "token": "INTEGER"}


def test_a_writer_rebuilds_views_whose_sql_changed(tmp_path) -> None:  # noqa: ANN001
    """A file keeps answering with the current view SQL after an upgrade: the next writer rebuilds them."""
    path = tmp_path / "w"
    db.connect(path).close()
    con = db.connect(path)
    con.execute("CREATE OR REPLACE VIEW loss AS SELECT * FROM activations WHERE false")
    con.execute("UPDATE meta SET value = 'stale' WHERE key = 'views'")
    con.close()
    con = db.connect(path)
    try:
        assert db.stored_views(con) == db.views_fingerprint()
        plan = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = 'loss'").fetchone()
        assert plan is not None and "objective" in plan[0]
    finally:
        con.close()


def test_the_demo_query_runs_through_the_cli(tmp_path) -> None:  # noqa: ANN001
    """`make demo` prints examples/demo_query.sql's answer; a query opening with a comment must parse."""
    path = tmp_path / "demo.duckdb"
    runner = CliRunner()
    ingest = runner.invoke(main, ["ingest", "--db", str(path), "--model", "gpt2-tiny", "--quiet",
                                  "--prompts", str(db.ROOT / "examples" / "capitals.jsonl")])  # fmt: skip
    assert ingest.exit_code == 0, ingest.output
    query = (db.ROOT / "examples" / "demo_query.sql").read_text()
    result = runner.invoke(main, ["sql", "--db", str(path), "--format", "csv", "--", query])
    assert result.exit_code == 0, result.output
    assert len(result.output.splitlines()) == 1 + 3 * 4
