"""BI-tool access through SQLAlchemy: `create_engine("duckdb:///file")` reflects every table and view.

The dialect is duckdb-sqlalchemy (docs/BI.md says why): these tests also fail if another package's
`duckdb` dialect (duckdb-engine) shadows it, since that one cannot reflect on SQLAlchemy >= 2.0.45.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import duckdb
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.pool import NullPool

from cli import main
from queries import Warehouse
from warehouse import db


@pytest.fixture(scope="module")
def tiny_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bi") / "bi.duckdb"
    result = CliRunner().invoke(
        main,
        ["ingest", "--db", str(path), "--model", "gpt2-tiny", "--quiet", "--target", " Paris", "--distractor",
         " London", "--prompt", "The capital of France is", "--prompt", "Paris is in"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return path


def _catalog(path: Path) -> tuple[set[str], set[str]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    finally:
        con.close()
    return tables, views


def test_duckdb_url_uses_the_tested_dialect() -> None:
    engine = sa.create_engine("duckdb:///:memory:")
    assert type(engine.dialect).__module__.startswith("duckdb_sqlalchemy")


def _engine(path: Path, how: str) -> sa.Engine:
    if how == "api":
        return Warehouse(path).engine()
    return sa.create_engine(f"duckdb:///{path}", connect_args={"read_only": how == "read-only"}, poolclass=NullPool)


@pytest.mark.parametrize("how", ["read-only", "read-write", "api"])
def test_reflect_everything_without_warnings_and_group_by(tiny_db: Path, how: str) -> None:
    tables, views = _catalog(tiny_db)
    assert {"activations", "scalars", "mlp_write_norm", "dash_top_nodes", "dash_rows_per_run"} <= tables | views
    engine = _engine(tiny_db, how)
    metadata = sa.MetaData()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unknown column type would be an SAWarning
        metadata.reflect(engine, views=True)
        assert set(metadata.tables) == tables | views
        for table in metadata.tables.values():
            for column in table.columns:
                assert not isinstance(column.type, sa.types.NullType), f"{table.name}.{column.name}"
        facts = metadata.tables["activations"]
        for name, member in [("dst", "mlp_post_act"), ("node_type", "mlp_neuron"), ("pass_type", "backward")]:
            assert isinstance(facts.c[name].type, sa.Enum) and member in facts.c[name].type.enums
        query = (
            sa.select(facts.c.dst, facts.c.pass_type, sa.func.count().label("n"), sa.func.avg(facts.c.value))
            .where(facts.c.layer == 0)
            .group_by(facts.c.dst, facts.c.pass_type)
            .order_by(facts.c.dst, facts.c.pass_type)
        )
        with engine.connect() as con:
            rows = con.execute(query).fetchall()
            per_view = con.execute(
                sa.text("SELECT node_type, count(*) FROM scalars WHERE dst = :dst GROUP BY node_type"),
                {"dst": "mlp_write_norm"},
            ).fetchall()
    counts = {(r.dst, r.pass_type): r.n for r in rows}
    assert counts[("mlp_post_act", "forward")] == counts[("mlp_post_act", "backward")] == 8 * 128
    assert per_view == [("mlp_neuron", 2 * 8 * 128)]


def test_read_only_uri_as_superset_registers_it(tiny_db: Path) -> None:
    """The URI docs/BI.md gives Superset: read-only through the URL, NullPool as Superset uses."""
    engine = sa.create_engine(f"duckdb:///{tiny_db}?access_mode=read_only", poolclass=NullPool)
    with engine.connect() as con:
        runs = con.execute(sa.text("SELECT run_id, prompts, n_rows FROM dash_rows_per_run")).fetchall()
        assert runs[0].prompts == 2 and runs[0].n_rows > 0
        with pytest.raises(sa.exc.DBAPIError, match="read-only"):
            con.execute(sa.text("DELETE FROM prompts"))
    # NullPool closed the DuckDB connection: a writer gets the file at once
    db.connect(tiny_db, wait_s=0).close()


def test_pandas_reads_dashboard_view(tiny_db: Path) -> None:
    pd = pytest.importorskip("pandas")
    engine = sa.create_engine(f"duckdb:///{tiny_db}", connect_args={"read_only": True}, poolclass=NullPool)
    frame = pd.read_sql(
        sa.text("SELECT * FROM dash_top_nodes WHERE prompt_id = :p ORDER BY rank, side"), engine, params={"p": 0}
    )
    assert len(frame) == 20 and set(frame["side"]) == {"top", "bottom"}
    assert frame["write_norm"].notna().all()


def _writer_can_open(path: Path) -> bool:
    """Whether another process gets the file read-write at once, as an ingest's commit would."""
    code = "import duckdb, sys\ntry:\n    duckdb.connect(sys.argv[1]).close()\nexcept duckdb.Error:\n    sys.exit(1)"
    return subprocess.run([sys.executable, "-c", code, str(path)], check=False).returncode == 0


def test_api_engine_releases_the_file_after_each_connection(tiny_db: Path) -> None:
    """What lets an ingest commit between dashboard queries."""
    engine = Warehouse(tiny_db).engine()
    with engine.connect() as con:
        assert con.execute(sa.text("SELECT count(*) FROM prompts")).scalar() > 0
        assert not _writer_can_open(tiny_db)  # held while the connection is out
    assert _writer_can_open(tiny_db)
