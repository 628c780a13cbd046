"""Query every view and every table macro a warehouse file holds, enumerated from its catalog: each must
answer with rows or with one line saying why it cannot, never a binder or internal error (a broken view
is otherwise noticed only when someone queries it) and never a silent empty answer for a pair it cannot
answer.

Table macros are called with the arguments their call sites in queries/ give them (a macro whose every
call passes the names of dsts, such as act_times_grad('resid_post_embedding', ...)), and a token pair for
the parameters that take one; each macro taking a pair is also called with a pair it cannot answer and
must raise the pair's one-line error.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import duckdb
import pytest

from queries import DstNotAvailable, Warehouse
from queries.absence import explain_empty
from warehouse import db

PAIR_PARAMETERS = {"t": 0, "target": 0, "v": 0, "d": 1, "distractor": 1}
# A query giving the arguments of a macro that no SQL file in queries/ calls (a generated one): each new
# one is added here. Their answers must have rows.
EXAMPLE_ARGUMENTS = {
    "activations_by_hook": "SELECT min(h.hook_name) FROM tl_hooks h JOIN (SELECT DISTINCT dst, layer FROM facts) f"
    " ON f.dst = h.dst AND f.layer IS NOT DISTINCT FROM h.layer",
    # an MLP neuron of the last layer: rows, or one line (no input-side weights, no pre-activations stored)
    "edges_into": "SELECT 'mlp_post_act', max(layer), 0 FROM facts WHERE dst = 'mlp_post_act'",
    "edges_from": "SELECT 'mlp_post_act', 0, 0",
    "edges_between": "SELECT 'mlp_post_act', max(layer), 0, 'mlp_post_act', max(layer) - 1, 0 FROM facts"
    " WHERE dst = 'mlp_post_act'",
}
# Macros that yield no rows for an answerable pair by design: the refusal branch of the pair macros.
# pair_refusal: rows only to raise; embedding_out_edges: a branch of edges_from (69_edge_dispatch.sql), whose
# refusal says why it is empty (no input-side weights), as it does for the branches that take arguments;
# attention_read_gradients (every head, a part of edges_from whose refusal names what it lacks) and
# autoencoder_sites (one row per residual SAE: none in a warehouse without SAEs).
EMPTY_BY_DESIGN = {"pair_refusal", "embedding_out_edges", "attention_read_gradients", "autoencoder_sites"}
# Macros whose answer for a pair that cannot be answered is the reason as a value, not an error.
REASONS = {"pair_problem"}
_CALL = re.compile(r"\b(\w+)\(((?:\s*(?:'[^']*'|NULL|\w+)\s*,?)*)\)")


def call_sites() -> dict[str, set[tuple[str, ...]]]:
    """Each macro's argument lists as written in queries/support and queries/derived: literals kept,
    a parameter name passed on kept as its name."""
    sites: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for path in [*db.SUPPORT_DIR.glob("*.sql"), *db.DERIVED_DIR.glob("*.sql")]:
        for name, args in _CALL.findall(path.read_text()):
            sites[name].add(tuple(a.strip() for a in args.split(",") if a.strip()))
    return sites


def _arguments(
    con: duckdb.DuckDBPyConnection, name: str, parameters: list[str], pair: tuple[int, int | None], sites: dict
) -> list[tuple]:
    """Argument lists to call `name` with: its call sites' literals, the pair where a parameter takes one."""
    found = []
    for site in sites.get(name, ()):
        if len(site) != len(parameters):
            continue
        values: list[Any] = []
        for param, arg in zip(parameters, site, strict=True):
            if param in PAIR_PARAMETERS:
                values.append(pair[PAIR_PARAMETERS[param]])
            elif arg.startswith("'"):
                values.append(arg.strip("'"))
            elif arg == "NULL":
                values.append(None)
            else:
                break  # an argument passed on from the caller: covered by the caller's own call
        else:
            found.append(tuple(values))
    if name in EXAMPLE_ARGUMENTS:
        found.append(tuple(con.execute(EXAMPLE_ARGUMENTS[name]).fetchall()[0]))
    if not found and all(p in PAIR_PARAMETERS for p in parameters):
        found.append(tuple(pair[PAIR_PARAMETERS[p]] for p in parameters))
    return sorted(set(found), key=repr)


def _literals(args: tuple) -> str:
    """Arguments as SQL literals: a macro's parameter may reach a GROUP BY, where DuckDB takes no `?`."""
    return ", ".join(
        "NULL" if a is None else str(a) if isinstance(a, int) else "'" + a.replace("'", "''") + "'" for a in args
    )


def _refused(exc: Exception) -> bool:
    """Whether `exc` is an answer's one-line refusal (the error() of a macro that cannot answer)."""
    return "Invalid Input Error" in _one_line(exc)


def _one_line(exc: Exception) -> str:
    text = str(exc)
    assert "\n" not in text.strip(), f"a multi-line error: {text!r}"
    assert not re.search(r"Binder Error|Catalog Error|INTERNAL|Parser Error|Conversion Error", text), text
    return text


def assert_every_relation_answers(wh: Warehouse, pair: tuple[int, int | None], absent: int) -> None:
    """Every view and table macro of `wh` answers for one prompt (LIMIT 1) with rows or one line saying
    why not; the macros taking a pair or a token answer `pair` and refuse the token `absent` (one whose
    unembedding column is not stored), given as both target and distractor, in one line."""
    unanswerable = (absent, absent)
    sites = call_sites()
    with wh.session(), wh._connection() as con:
        prompt = con.execute("SELECT min(prompt_id) FROM prompts").fetchall()[0][0]
        dsts = set(db.dst_names())
        backward = con.execute("SELECT count(*) FROM facts WHERE backward IS NOT NULL").fetchall()[0][0] > 0
        views = [r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()]
        assert "scalars" in views and len(views) > 40, views
        for view in sorted(views):
            columns = {r[0] for r in con.execute(f'DESCRIBE "{view}"').fetchall()}
            scope = " WHERE prompt_id = ?" if "prompt_id" in columns else ""
            try:
                rows = con.execute(f'SELECT * FROM "{view}"{scope} LIMIT 1', [prompt] if scope else []).fetchall()
            except Exception as exc:  # noqa: BLE001 - the test's point: any error must be a one-line refusal
                assert _refused(exc), f"view {view}: {exc}"
                continue
            if rows:
                continue
            if view not in dsts:  # the core and dashboard views: rows wherever a backward pass is stored
                assert not backward, f"view {view} is empty though both passes are stored"
                continue
            with pytest.raises(DstNotAvailable) as caught:
                explain_empty(con, view, prompt_id=prompt)
            _one_line(caught.value)
        macros = con.execute(
            "SELECT function_name, parameters FROM duckdb_functions()"
            " WHERE function_type = 'table_macro' AND NOT internal AND database_name = current_database()"
        ).fetchall()
        assert len(macros) > 20, macros
        for name, parameters in sorted(macros):
            calls = _arguments(con, name, parameters, pair, sites)
            takes_pair = any(p in PAIR_PARAMETERS for p in parameters)
            # a macro called only with its caller's parameters is queried through that caller
            assert calls or name in sites or name == "unembedding_stored", f"macro {name} has no call to test"
            for args in calls:
                try:
                    rows = con.execute(f"SELECT * FROM {name}({_literals(args)}) LIMIT 1").fetchall()
                except Exception as exc:  # noqa: BLE001 - as above
                    assert _refused(exc), f"macro {name}{args}: {exc}"
                    continue
                if not rows and name not in EMPTY_BY_DESIGN:
                    assert name not in EXAMPLE_ARGUMENTS, f"macro {name}{args} answers no rows"
                    if name == "post_block_scales":  # the scales of norms after the blocks, where a model has them
                        normed = con.execute("SELECT bool_or(post_block_norms) FROM model_switches()").fetchall()
                        assert not normed[0][0], f"macro {name}{args} answers no rows"
                        continue
                    named = [a for a in args if isinstance(a, str) and a in dsts]
                    assert named, f"macro {name}{args} answers no rows and names no dst to say why"
                    reasons = []
                    for dst in named:  # its input (source) or the view it makes (out_dst) is not stored
                        try:
                            explain_empty(con, dst)
                        except DstNotAvailable as exc:
                            reasons.append(_one_line(exc))
                    assert reasons, f"macro {name}{args} answers no rows though {named} are stored"
            if takes_pair and name not in REASONS:
                bad = _arguments(con, name, parameters, unanswerable, sites)
                for args in bad:
                    with pytest.raises(Exception) as caught:  # noqa: PT011 - duckdb's error class varies
                        con.execute(f"SELECT * FROM {name}({_literals(args)}) LIMIT 1").fetchall()
                    assert _refused(caught.value), f"{name}{args}: {caught.value}"
