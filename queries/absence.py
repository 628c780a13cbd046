"""Why an answer holds no rows. A question about a dst whose rows were never stored (a location not
captured, a layer left out by --layers, a pass not run, a derived dst whose inputs are missing) would
otherwise come back as an empty table, which reads as "nothing there". Every reading call of the query
API that finds its answer empty asks `explain_empty`, which raises DstNotAvailable with the one-line
reason when the data is missing, and returns when the rows exist but the question's filters select none
(a latent that never fired, a value range nothing reaches).

Only empty answers pay for the check: one LIMIT 1 probe of the dst's relation per scope (the dst, then
its layer), and the runs' recorded layers for the message.
"""

from __future__ import annotations

from typing import Any

import duckdb

from queries.catalog import view_header
from queries.sources import DstNotAvailable
from queries.stored_facts import require_facts, require_some_facts
from warehouse import db, registry


def _any_row(con: duckdb.DuckDBPyConnection, relation: str, where: str, params: list[Any]) -> bool:
    return bool(con.execute(f"SELECT 1 FROM {relation} WHERE {where} LIMIT 1", params).fetchall())


def stored_layers(con: duckdb.DuckDBPyConnection) -> list[int] | None:
    """The layers the ingests stored (runs.layers, NULL for every layer): None when one stored them all."""
    layers: set[int] = set()
    for (run_layers,) in con.execute("SELECT layers FROM runs WHERE n_prompts > 0 OR status = 'running'").fetchall():
        if run_layers is None:
            return None
        layers.update(run_layers)
    return sorted(layers)


def _why_missing(dst: str, pass_type: str) -> str:
    loc = registry.LOCATION_BY_DST.get(dst)
    if loc is None:
        needs = next((view_header(p).get("needs", "") for p in db.derived_view_files() if p.stem == dst), "")
        return f"its inputs are not stored (it needs: {needs})" if needs else "its inputs are not stored"
    if pass_type == "backward":
        return f"no ingest captured {loc.name}:backward (ingest with a target and without --no-backward)"
    return f"no ingest captured {loc.name} (ingest with --locations {loc.name})"


def logit_only(dst: str) -> bool:
    """Whether `dst` is taken on the logit difference of each prompt's target (direct effects, the final
    residual's gradient), so that a prompt traced from a node (ingest --objective-node) has none."""
    return dst == "logit_diff" or dst.endswith("final_residual_grad")


def traced_from_node(
    con: duckdb.DuckDBPyConnection, prompt_id: int | None = None, run_id: int | None = None
) -> str | None:
    """One line saying that the prompt (or every prompt of the run) had a node as its backward objective
    and so no logit-difference scalars; None when it did not."""
    if prompt_id is not None:
        rows = con.execute("SELECT objective_node FROM prompts WHERE prompt_id = ?", [prompt_id]).fetchall()
        node, scope = (rows[0][0] if rows else None), f"prompt {prompt_id}"
    elif run_id is not None:
        rows = con.execute("SELECT objective FROM runs WHERE run_id = ?", [run_id]).fetchall()
        node, scope = (
            (rows[0][0].removeprefix("node:") if rows and rows[0][0].startswith("node:") else None),
            f"run {run_id}",
        )
    else:
        return None
    if node is None:
        return None
    return (
        f"{scope} traced from the node {node} (ingest --objective-node), not from a logit difference: it has no "
        "direct effects on a target's logit; direct_effects(target, distractor) takes them for any pair"
    )


def explain_empty(
    con: duckdb.DuckDBPyConnection,
    dst: str,
    pass_type: str = "forward",
    layer: int | None = None,
    prompt_id: int | None = None,
    run_id: int | None = None,
) -> None:
    """Raise DstNotAvailable (one line) when `dst` has no stored rows for this pass (of this prompt or run;
    FactsNotStored when they were stored without facts) or none at `layer`; return when it has rows there,
    so an empty answer is the true one.

    `dst` must be a checked name (its view name reaches SQL text).
    """
    relation = "activations" if dst in registry.LOCATION_BY_DST else f'"{dst}"'
    where, params = "dst = ? AND pass_type = ?", [dst, pass_type]
    scope = ""
    if prompt_id is not None:
        where += " AND prompt_id = ?"
        params.append(prompt_id)
        scope = f" for prompt {prompt_id}"
    elif run_id is not None:
        where += " AND prompt_id IN (SELECT prompt_id FROM prompts WHERE run_id = ?)"
        params.append(run_id)
        scope = f" in run {run_id}"
    if not _any_row(con, relation, where, params):
        traced = traced_from_node(con, prompt_id, run_id) if logit_only(dst) else None
        if traced is not None:
            raise DstNotAvailable(f"{dst}: {traced}")
        # prompts stored without their facts (ingest --store summaries) have no rows of any dst
        if prompt_id is not None:
            require_facts(con, [prompt_id])
        else:
            require_some_facts(con, run_id)
        raise DstNotAvailable(
            f"this warehouse stores no {pass_type} rows of {dst}{scope}: {_why_missing(dst, pass_type)}"
        )
    if layer is not None and not _any_row(con, relation, f"{where} AND layer = ?", [*params, layer]):
        layers = stored_layers(con)
        kept = f"the ingests stored layers {', '.join(map(str, layers))}" if layers else "its inputs there are missing"
        raise DstNotAvailable(
            f"layer {layer} of {dst} is not stored{scope}: {kept} (ingest again with --layers {layer} to add it)"
        )
