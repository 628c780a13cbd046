"""The act-times-grad views pair each element's forward and backward rows exactly as a join on the element
key does, and give nothing for a prompt stored without a backward pass."""

from __future__ import annotations

from pathlib import Path

from ingest.prompts import PromptInput
from ingest.worker import IngestOptions, ingest
from warehouse import db
from warehouse.registry import LOCATIONS

PROMPTS = [
    PromptInput("The capital of France is", " Paris", " London"),
    PromptInput("The capital of Italy is", " Rome"),
]
POST_ACT = LOCATIONS["mlp.post_act"].dst
VIEWS = {
    "mlp_act_times_grad": POST_ACT,
    "unflattened_attn_act_times_grad": LOCATIONS["attn.qk_probs"].dst,
    "token_attribution": LOCATIONS["resid.post_emb"].dst,
}


def _by_key(con, source: str, prompt_id: int) -> dict[tuple, float]:  # noqa: ANN001
    """x * dx joined on the element key, written out here independently of the views."""
    rows = con.execute(
        """
        SELECT f.token, f.token2, f.layer, f.head, f.node_index, f.value * b.value
        FROM activations f JOIN activations b
          ON b.prompt_id = f.prompt_id AND b.token = f.token AND b.token2 IS NOT DISTINCT FROM f.token2
         AND b.layer IS NOT DISTINCT FROM f.layer AND b.head IS NOT DISTINCT FROM f.head AND b.node_index = f.node_index
        WHERE f.prompt_id = ? AND f.dst = ? AND f.pass_type = 'forward' AND b.dst = ? AND b.pass_type = 'backward'""",
        [prompt_id, source, source],
    ).fetchall()
    return {tuple(r[:-1]): r[-1] for r in rows}


def _view(con, view: str, prompt_id: int) -> dict[tuple, float]:  # noqa: ANN001
    rows = con.execute(
        f"SELECT token, token2, layer, head, node_index, value FROM {view} WHERE prompt_id = ?", [prompt_id]
    ).fetchall()
    return {tuple(r[:-1]): r[-1] for r in rows}


def _check(con, prompt_id: int) -> None:  # noqa: ANN001
    for view, source in VIEWS.items():
        got = _view(con, view, prompt_id)
        want = _by_key(con, source, prompt_id)
        if view == "token_attribution":  # summed over channels
            sums: dict[tuple, float] = {}
            for (t, t2, layer, head, _), v in want.items():
                sums[(t, t2, layer, head, 0)] = sums.get((t, t2, layer, head, 0), 0.0) + v
            want = sums
        assert set(got) == set(want) and want, view
        assert all(abs(got[k] - want[k]) <= 1e-5 * max(1.0, abs(want[k])) for k in want), view


def test_act_times_grad_pairs_passes_by_element_and_skips_forward_only_prompts(tmp_path: Path) -> None:
    path = tmp_path / "paths.duckdb"
    ingest(path, PROMPTS[:1], IngestOptions(model="gpt2-tiny", progress=False))
    ingest(path, PROMPTS[1:], IngestOptions(model="gpt2-tiny", progress=False, backward=False))
    with db.connect(path, read_only=True) as con:
        _check(con, 0)
        for view in VIEWS:
            assert con.execute(f"SELECT count(*) FROM {view} WHERE prompt_id = 1").fetchall() == [(0,)], view


def test_act_times_grad_pairs_passes_whose_rows_come_out_in_different_orders(tmp_path: Path) -> None:
    """Rows are gathered per token in scan order; backward rows stored in reverse order must still pair."""
    path = tmp_path / "reordered.duckdb"
    ingest(path, PROMPTS[:1], IngestOptions(model="gpt2-tiny", progress=False))
    with db.connect(path) as con:
        con.execute("CREATE TEMP TABLE stored AS SELECT * FROM activations")
        con.execute("DELETE FROM activations")
        con.execute(
            "INSERT INTO activations SELECT * FROM stored ORDER BY pass_type, "
            "CASE WHEN pass_type = 'backward' THEN -node_index ELSE node_index END, token2 DESC NULLS LAST"
        )
    with db.connect(path, read_only=True) as con:
        con.execute("SET threads = 1")  # scan order = insertion order
        differ = con.execute(
            "SELECT count(*) FROM (SELECT list(node_index) FILTER (pass_type = 'forward') AS x,"
            " list(node_index) FILTER (pass_type = 'backward') AS dx FROM activations"
            " WHERE dst = ? GROUP BY prompt_id, layer, token) WHERE x <> dx",
            [POST_ACT],
        ).fetchall()
        assert differ[0][0] > 0  # the passes really do come out in different orders
        _check(con, 0)


def test_act_times_grad_leaves_out_a_token_whose_passes_hold_different_elements(tmp_path: Path) -> None:
    path = tmp_path / "partial.duckdb"
    ingest(path, PROMPTS[:1], IngestOptions(model="gpt2-tiny", progress=False))
    with db.connect(path) as con:
        con.execute(
            "DELETE FROM activations WHERE dst = ? AND pass_type = 'backward'"
            " AND layer = 1 AND token = 2 AND node_index = 7",
            [POST_ACT],
        )
        rows = con.execute("SELECT layer, token, count(*) FROM mlp_act_times_grad GROUP BY ALL ORDER BY ALL").fetchall()
    n_tokens = len({t for _, t, _ in rows})
    assert (1, 2) not in {(layer, t) for layer, t, _ in rows}
    assert len(rows) == 2 * n_tokens - 1  # every other (layer, token), each whole
    assert {n for *_, n in rows} == {128}
