"""BI access through SQLAlchemy: the URL `duckdb+actwh:///<warehouse>` (queries/bi.py, docs/BI.md) and
`Warehouse(path).engine()` reach every table and view of the lake read-only, without warnings.

`duckdb://` must stay duckdb-sqlalchemy's dialect (the base of actwh's): these tests also fail if another
package's `duckdb` dialect (duckdb-engine) shadows it, since that one cannot reflect on SQLAlchemy >= 2.0.45.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.pool import NullPool

from cli import main
from queries import Warehouse, bi
from warehouse import db, registry

ROOT = Path(__file__).resolve().parents[1]
TABLES = {"meta", "models", "runs", "prompts", "tokens", "facts", "weights", "weight_vectors", "vocab",
          "mlp_out_norms", "direction_factors", "saes", "node_summaries", "node_examples", "summary_pools"}  # fmt: skip
MLP_POST_ACT = registry.LOCATIONS["mlp.post_act"].dst


def _ingest(path: Path, *prompts: str) -> None:
    args = ["ingest", "--db", str(path), "--model", "gpt2-tiny", "--quiet", "--target", " Paris", "--distractor",
            " London"] + [a for p in prompts for a in ("--prompt", p)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bi") / "warehouse"
    _ingest(path, "The capital of France is", "Paris is in")
    return path


def _catalog(path: Path) -> dict[str, list[str]]:
    """Every table and view of the lake with its columns in order, as DuckDB itself lists them."""
    con = db.connect(path, read_only=True)
    try:
        rows = con.execute(
            "SELECT table_name, list(column_name ORDER BY column_index) FROM duckdb_columns() "
            "WHERE database_name = current_database() AND schema_name = 'main' GROUP BY table_name"
        ).fetchall()
    finally:
        con.close()
    return dict(rows)


def _views() -> set[str]:
    dashboards = {p.stem for p in db.DASHBOARD_DIR.glob("*.sql")}
    return {"activations", "scalars"} | {p.stem for p in db.derived_view_files()} | dashboards


def _engine(path: Path, how: str) -> sa.Engine:
    return Warehouse(path).engine() if how == "api" else sa.create_engine(f"duckdb+actwh:///{path}")


def test_duckdb_urls_resolve_to_the_tested_dialects() -> None:
    assert type(sa.create_engine("duckdb:///:memory:").dialect).__module__.startswith("duckdb_sqlalchemy")
    dialect = sa.create_engine("duckdb+actwh:////nowhere").dialect
    assert type(dialect) is bi.ActwhDialect and dialect.name == "duckdb" and dialect.driver == "actwh"
    assert type(dialect).__mro__[1].__module__.startswith("duckdb_sqlalchemy")


@pytest.mark.parametrize("how", ["url", "api"])
def test_reflect_every_table_and_view_without_warnings_and_group_by(lake: Path, how: str) -> None:
    catalog = _catalog(lake)
    assert TABLES | _views() <= set(catalog)
    engine = _engine(lake, how)
    assert isinstance(engine.pool, NullPool)
    metadata = sa.MetaData()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unknown column type would be an SAWarning
        metadata.reflect(engine, views=True)
        assert {name: [c.name for c in t.columns] for name, t in metadata.tables.items()} == catalog
        for table in metadata.tables.values():
            for column in table.columns:
                assert not isinstance(column.type, sa.types.NullType), f"{table.name}.{column.name}"
        inspector = sa.inspect(engine)
        assert inspector.default_schema_name == "main"
        assert "actwh.main" in inspector.get_schema_names()
        for schema in (None, "main", "actwh.main"):
            assert set(inspector.get_table_names(schema)) == TABLES
            assert set(inspector.get_view_names(schema)) == set(catalog) - TABLES
        facts = metadata.tables["activations"]
        query = (
            sa.select(facts.c.dst, facts.c.pass_type, sa.func.count().label("n"))
            .where(facts.c.layer == 0, facts.c.dst == MLP_POST_ACT)
            .group_by(facts.c.dst, facts.c.pass_type)
            .order_by(facts.c.pass_type)
        )
        with engine.connect() as con:
            rows = con.execute(query).fetchall()
            n_tokens, d_mlp = con.execute(
                sa.text("SELECT sum(n_tokens), any_value(d_mlp) FROM prompts JOIN models USING (model_id)")
            ).one()
    assert n_tokens > 2 and d_mlp > 1
    assert [(r.pass_type, r.n) for r in rows] == [("backward", n_tokens * d_mlp), ("forward", n_tokens * d_mlp)]


def test_url_is_read_only_and_refuses_what_it_cannot_honour(lake: Path, tmp_path: Path) -> None:
    engine = sa.create_engine(f"duckdb+actwh:///{lake}")
    with engine.connect() as con, pytest.raises(sa.exc.DBAPIError, match="read-only|read only"):
        con.execute(sa.text("DELETE FROM prompts"))
    with pytest.raises(sa.exc.ArgumentError, match="read_only"):
        sa.create_engine(f"duckdb+actwh:///{lake}?read_only=false").connect()
    with pytest.raises(sa.exc.ArgumentError, match="threads"):
        sa.create_engine(f"duckdb+actwh:///{lake}", connect_args={"config": {"threads": 1}}).connect()
    with pytest.raises(db.NotAWarehouse, match="no warehouse yet"):
        sa.create_engine(f"duckdb+actwh:///{tmp_path / 'empty'}").connect()
    # Superset's DuckDB engine spec labels every connection with a user agent: accepted
    labelled = sa.create_engine(f"duckdb+actwh:///{lake}", connect_args={"config": {"custom_user_agent": "x"}})
    with labelled.connect() as con:
        assert con.execute(sa.text("SELECT count(*) FROM prompts")).scalar() == 2


def test_pandas_reads_dashboard_view(lake: Path) -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.read_sql(
        sa.text("SELECT * FROM dash_top_nodes WHERE prompt_id = :p ORDER BY rank, side"),
        sa.create_engine(bi.url(lake)),
        params={"p": 0},
    )
    assert len(frame) == 20 and set(frame["side"]) == {"top", "bottom"}
    assert frame["act_times_grad"].notna().all()


def test_url_works_from_a_fresh_process_through_the_entry_point(lake: Path) -> None:
    """What a BI tool does: nothing of actwh imported, the dialect found through its entry point."""
    code = (
        "import sys, sqlalchemy as sa\n"
        "engine = sa.create_engine(sys.argv[1])\n"
        "with engine.connect() as con:\n"
        "    runs = con.execute(sa.text('SELECT count(*) FROM dash_rows_per_run')).scalar()\n"
        "print(type(engine.dialect).__name__, runs)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, f"duckdb+actwh:///{lake}"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, (
        f"{result.stderr.strip().splitlines()[-1:]}: is the entry point registered? pip install -e . again"
    )
    assert result.stdout.split() == ["ActwhDialect", "1"]


def test_a_reader_keeps_its_snapshot_and_never_blocks_an_ingest(lake: Path, tmp_path: Path) -> None:
    """docs/BI.md's promise: a connection inside a transaction sees the snapshot it began with while an
    ingest commits (the ingest is not held up), and the next connection sees the new prompt."""
    moved = tmp_path / "moved"
    shutil.copytree(lake, moved)  # also: a copied warehouse folder keeps working through the URL
    engine = sa.create_engine(bi.url(moved))
    count = sa.text("SELECT count(*) FROM prompts")
    with engine.connect() as con:
        assert con.execute(count).scalar() == 2
        _ingest(moved, "Rome is the capital of")
        assert con.execute(count).scalar() == 2
    with engine.connect() as con:
        assert con.execute(count).scalar() == 3
