"""Converting a single-file warehouse of an earlier actwh (schema version 1, a DuckDB file of long rows
with ENUM names) into a lake: the same prompts, tokens, runs, models and values, with raw dst names
renamed to the reference names and each element's two passes joined into one fact row."""

from __future__ import annotations

from pathlib import Path

import duckdb

from warehouse import db, lake, registry
from warehouse.writer import LakeWriter

_COPIED = ("models", "prompts", "tokens", "vocab", "mlp_out_norms", "direction_factors", "weights")


def _renamed_dst() -> str:
    """SQL mapping a version-1 dst (the location with dots replaced) to its reference name."""
    cases = " ".join(f"WHEN '{loc.name.replace('.', '_')}' THEN '{loc.dst}'" for loc in registry.LOCATIONS.values())
    return f"CASE dst::VARCHAR {cases} ELSE dst::VARCHAR END"


def convert(source: Path, target: Path) -> dict[str, int]:
    """Copy `source` (a version-1 file) into the new lake `target`; returns rows per table written.

    Raises WarehouseError when the source is not a version-1 warehouse or the target already holds one.
    """
    if db.config_for(target).exists:
        raise db.WarehouseError(f"{target} already holds a warehouse: convert into a new --db folder")
    with LakeWriter(target) as writer:
        con = writer.con
        assert con is not None
        try:
            con.execute(f"ATTACH '{source}' AS old (READ_ONLY)")
        except duckdb.Error as exc:
            raise db.WarehouseError(f"{source}: cannot read it ({str(exc).splitlines()[0]})") from None
        try:
            return _copy(writer, source)
        finally:
            con.execute("DETACH old")


def _copy(writer: LakeWriter, source: Path) -> dict[str, int]:
    with writer.transaction() as con:
        version = con.execute("SELECT value FROM old.meta WHERE key = 'schema_version'").fetchall()
        if not version or version[0][0] != "1":
            raise db.WarehouseError(f"{source} is not a single-file warehouse of schema version 1")
        counts: dict[str, int] = {}
        for table in (*_COPIED, "runs"):
            columns = [r[0] for r in con.execute(f"SELECT column_name FROM (DESCRIBE old.{table})").fetchall()]
            # version 1 stored float32 and encoded prompts as plain text, with no BOS added
            extra = (
                ", 'float32' AS precision, false AS prepend_bos, 'text' AS special_tokens" if table == "runs" else ""
            )
            # version 1 named a token's index `position`; the lake calls it `token`, as the facts do
            renamed = " RENAME (position AS token)" if "position" in columns else ""
            columns = ["token" if c == "position" else c for c in columns]
            select = f"SELECT *{renamed}{extra} FROM old.{table}"
            lake.insert_by_nulls(con, table, select, columns, ", ".join(columns))
            counts[table] = int(con.execute(f"SELECT count(*) FROM old.{table}").fetchall()[0][0])
        paired = f"""SELECT prompt_id, token, token2, layer, head, any_value(node_type)::VARCHAR AS node_type,
                            node_index, {_renamed_dst()} AS dst,
                            any_value(value) FILTER (pass_type = 'forward') AS forward,
                            any_value(value) FILTER (pass_type = 'backward') AS backward
                     FROM old.activations GROUP BY prompt_id, token, token2, layer, head, node_index, dst"""
        nullable = ["token2", "layer", "head", "forward", "backward"]
        lake.insert_by_nulls(con, "facts", paired, nullable, "dst, layer, prompt_id, token, token2, head, node_index")
        counts["facts"] = int(con.execute("SELECT count(*) FROM facts").fetchall()[0][0])
        db.weight_vectors_from_rows(con)
        counts["weight_vectors"] = int(con.execute("SELECT count(*) FROM weight_vectors").fetchall()[0][0])
    return counts
