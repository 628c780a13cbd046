"""Apache Spark (pyspark, local mode, offline) reads a shared-catalog warehouse's fact files from the list
the catalog gives (Warehouse.parquet_files) and ranks MLP neurons by activation x gradient exactly as
DuckDB's view mlp_act_times_grad does; merged-away files left on disk by a compaction are not listed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from queries import Warehouse

pytestmark = pytest.mark.slow
# skipped before a PostgreSQL server starts: pyspark is its own extra, not part of `make install`
pyspark = pytest.importorskip("pyspark.sql", reason="pyspark is not installed: pip install -e '.[spark]'")
TOP = 20
KEY = ["prompt_id", "token", "layer", "node_index"]
DUCKDB_TOP = f"""
SELECT prompt_id, token, layer, node_index, value FROM mlp_act_times_grad
ORDER BY value DESC, prompt_id, token, layer, node_index LIMIT {TOP}
"""


def test_spark_reads_the_catalogs_file_list_and_ranks_as_duckdb(pg_catalog: str, tmp_path: Path) -> None:
    if shutil.which("java") is None:
        pytest.skip("Spark needs a Java runtime (java on PATH)")
    base = ["ingest", "--db", pg_catalog, "--model", "gpt2-tiny", "--quiet", "--batch-size", "1"]
    for text in ("The capital of France is", "One two three four five", "Rome and Berlin are"):
        args = [*base, "--prompt", text, "--target", " Paris", "--data-path", str(tmp_path / "shared")]
        assert CliRunner().invoke(main, args).exit_code == 0
    assert CliRunner().invoke(main, ["compact", "--db", pg_catalog]).exit_code == 0
    CliRunner().invoke(main, [*base, "--prompt", "North and south", "--target", " Paris"])
    warehouse = Warehouse(pg_catalog)
    files = warehouse.parquet_files("facts")
    on_disk = list((tmp_path / "shared").rglob("*.parquet"))
    assert len(on_disk) > len(files)  # a glob would also read other tables' and merged-away files

    spark = (
        pyspark.SparkSession.builder.master("local[1]")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .getOrCreate()
    )
    try:
        spark.read.parquet(*files).createOrReplaceTempView("facts")
        ranked = spark.sql(
            f"""SELECT prompt_id, token, layer, node_index, CAST(forward * backward AS FLOAT) AS value FROM facts
                WHERE dst = 'mlp_post_act' AND forward IS NOT NULL AND backward IS NOT NULL
                ORDER BY value DESC, prompt_id, token, layer, node_index LIMIT {TOP}"""
        ).collect()
    finally:
        spark.stop()
    expected = warehouse.sql(DUCKDB_TOP, output="rows")
    assert len(expected) == TOP
    assert [tuple(row) for row in ranked] == [tuple(row) for row in expected]
