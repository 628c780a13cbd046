"""The act-times-grad views pair each element's forward and backward values exactly as a join of the
long-format rows on the element key does, and give nothing where a backward value is not stored."""

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
    path = tmp_path / "paths"
    ingest(path, PROMPTS[:1], IngestOptions(model="gpt2-tiny", progress=False))
    ingest(path, PROMPTS[1:], IngestOptions(model="gpt2-tiny", progress=False, backward=False))
    with db.connect(path, read_only=True) as con:
        _check(con, 0)
        for view in VIEWS:
            assert con.execute(f"SELECT count(*) FROM {view} WHERE prompt_id = 1").fetchall() == [(0,)], view


def test_act_times_grad_leaves_out_an_element_whose_backward_is_not_stored(tmp_path: Path) -> None:
    path = tmp_path / "partial"
    ingest(path, PROMPTS[:1], IngestOptions(model="gpt2-tiny", progress=False))
    with db.connect(path, read_only=True) as con:
        before = con.execute("SELECT count(*) FROM mlp_act_times_grad").fetchall()[0][0]
    with db.connect(path) as con:
        con.execute(
            "UPDATE facts SET backward = NULL WHERE dst = ? AND layer = 1 AND token = 2 AND node_index = 7", [POST_ACT]
        )
    with db.connect(path, read_only=True) as con:
        rows = con.execute("SELECT count(*) FROM mlp_act_times_grad WHERE layer = 1 AND token = 2 AND node_index = 7")
        assert rows.fetchall() == [(0,)]
        assert con.execute("SELECT count(*) FROM mlp_act_times_grad").fetchall()[0][0] == before - 1
        _check(con, 0)
