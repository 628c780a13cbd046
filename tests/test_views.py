"""The derived views equal a direct torch computation, and DERIVED_SCALARS.md's identities hold through them.

One warehouse per model (the tiny GPT-2, SmolLM2 from its GGUF, and random checkpoints of the other
families) holds the same prompt three times:
A with every location forward plus the Tier-1 gradients (direct effects from the closed-form g),
B with every location forward and backward (g stored), and C with another target/distractor pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest

from ingest.checkpoints import LoadedModel, load_model
from ingest.prompts import PromptInput
from ingest.worker import IngestOptions, ingest
from queries.catalog import view_header
from tests import random_models
from tests.torch_scalars import expected_scalars
from warehouse import db
from warehouse.registry import LOCATIONS

PROMPT = "The capital of France is"
PAIR_A = (" Paris", " London")
PAIR_C = (" Rome", " Berlin")
EVERY_MODEL = [name for name, loc in LOCATIONS.items() if not loc.only_with]  # none of these models norms block outputs
FORWARD_ALL = [f"{name}:forward" for name in EVERY_MODEL]
TIER1_GRADS = ["mlp.post_act:backward", "attn.qk_probs:backward", "resid.post_emb:backward"]


@dataclass
class Stored:
    loaded: LoadedModel
    con: duckdb.DuckDBPyConnection
    prompt_a: int
    prompt_b: int
    prompt_c: int


def _ingest(path: Path, model: str, pair: tuple[str, str], locations: list[str], force: bool = False) -> int:
    options = IngestOptions(model=model, locations=locations, progress=False, force=force)
    report = ingest(path, [PromptInput(PROMPT, *pair)], options)
    assert report.stored == 1, report
    with db.connect(path, read_only=True) as con:
        row = con.execute("SELECT max(prompt_id) FROM prompts").fetchone()
    assert row is not None
    return int(row[0])


def _build(tmp: Path, model: str) -> Stored:
    path = tmp / "views.duckdb"
    a = _ingest(path, model, PAIR_A, FORWARD_ALL + TIER1_GRADS)
    b = _ingest(path, model, PAIR_A, EVERY_MODEL)
    c = _ingest(path, model, PAIR_C, FORWARD_ALL + TIER1_GRADS)
    return Stored(load_model(model), db.connect(path, read_only=True), a, b, c)


# Random checkpoints of the other families (tests/random_models.py), each with a small tokenizer of its own
FAMILY_CHECKPOINTS: dict[str, tuple[str, dict]] = {
    "llama-biases-untied": ("LlamaConfig", {**random_models.SMALL_LLAMA, "attention_bias": True, "mlp_bias": True}),
    "qwen2": ("Qwen2Config", random_models.SMALL_LLAMA),
    "gpt_neox-parallel": ("GPTNeoXConfig", random_models.SMALL_NEOX),
    "gemma": ("GemmaConfig", {**random_models.SMALL_LLAMA, "head_dim": 16}),
}


@pytest.fixture(scope="module", params=["gpt2-tiny", "smollm2", *FAMILY_CHECKPOINTS])
def stored(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    model = request.param
    if model in FAMILY_CHECKPOINTS:
        path = random_models.checkpoint_with_tokenizer(*FAMILY_CHECKPOINTS[model], tmp_path_factory.mktemp(model))
        model = str(path)
    s = _build(tmp_path_factory.mktemp("views"), model)
    yield s
    s.con.close()


def _token(stored: Stored, text: str) -> int:
    ids = stored.loaded.tokenizer.encode_ordinary(text)
    assert len(ids) == 1
    return ids[0]


def _rows(con: duckdb.DuckDBPyConnection, query: str, params: list) -> dict[tuple, float]:
    return {tuple(r[:-1]): r[-1] for r in con.execute(query, params).fetchall()}


def _assert_close(got: dict[tuple, float], want: dict[tuple, float], rel: float, what: str) -> None:
    assert set(got) == set(want), f"{what}: keys differ, e.g. {sorted(set(got) ^ set(want), key=str)[:5]}"
    scale = max(abs(v) for v in want.values()) or 1.0
    worst = max(abs(got[k] - want[k]) for k in want)
    assert worst <= rel * scale, f"{what}: max |diff| {worst:.3g} > {rel:g} x {scale:.3g}"


def test_every_derived_view_matches_torch(stored: Stored) -> None:
    ids = stored.loaded.tokenizer.encode_ordinary(PROMPT)
    expected = expected_scalars(stored.loaded.model, ids, _token(stored, PAIR_A[0]), _token(stored, PAIR_A[1]))
    derived = {p.stem for p in db.derived_view_files()}
    assert set(expected) == derived, set(expected) ^ derived
    for dst, want in expected.items():
        got = _rows(
            stored.con,
            f"SELECT token, token2, layer, head, node_index, value FROM {dst} WHERE prompt_id = ?",
            [stored.prompt_a],
        )
        _assert_close(got, want, 1e-5, dst)
        node_types = stored.con.execute(f"SELECT DISTINCT node_type FROM {dst} WHERE prompt_id = ?", [stored.prompt_a])
        assert node_types.fetchall() == [(view_header(db.DERIVED_DIR / f"{dst}.sql")["node_type"],)], dst
        through_union = stored.con.execute(
            "SELECT count(*) FROM scalars WHERE dst = ? AND prompt_id = ?", [dst, stored.prompt_a]
        ).fetchone()
        assert through_union == (len(want),), dst


def _one(con: duckdb.DuckDBPyConnection, query: str, params: list) -> float:
    row = con.execute(query, params).fetchone()
    assert row is not None and row[0] is not None, query
    return float(row[0])


def test_direct_effects_decompose_the_objective(stored: Stored) -> None:
    """sum of every node's direct effect + sum_l (b_O + b_out) . g = L - beta_f . (W_U[:,t] - W_U[:,d])."""
    con, pid = stored.con, stored.prompt_a
    effects = _one(
        con,
        "SELECT sum(value) FROM scalars WHERE prompt_id = ? AND dst IN ('mlp_write_to_final_residual_grad',"
        " 'unflattened_attn_write_to_final_residual_grad', 'resid_post_embedding_proj_to_final_residual_grad')",
        [pid],
    )
    biases = _one(
        con,
        "SELECT sum(value / final_scale) FROM (SELECT * FROM pair_join_factors(NULL, NULL, 'attn_bias')"
        " UNION ALL SELECT * FROM pair_join_factors(NULL, NULL, 'mlp_bias')) WHERE prompt_id = ?",
        [pid],
    )
    final_bias = _one(
        con,
        """
        SELECT sum(b.value * (ut.value - coalesce(ud.value, 0)))
        FROM prompts p
        JOIN weights b ON b.model_id = p.model_id AND b.location = 'layer_norm_bias.final'
        JOIN weights ut ON ut.model_id = p.model_id AND ut.location = 'unembedding'
             AND ut.col_index = p.target_id AND ut.row_index = b.row_index
        LEFT JOIN weights ud ON ud.model_id = p.model_id AND ud.location = 'unembedding'
             AND ud.col_index = p.distractor_id AND ud.row_index = b.row_index
        WHERE p.prompt_id = ?""",
        [pid],
    )
    objective = _one(con, "SELECT objective FROM prompts WHERE prompt_id = ?", [pid])
    assert abs(effects + biases - (objective - final_bias)) <= 1e-4 * abs(objective)


@pytest.mark.parametrize("block", ["attn", "mlp"])
def test_node_writes_sum_to_the_block_output(stored: Stored, block: str) -> None:
    """Per layer: the nodes' direct effects plus the block's bias term equal the block output's."""
    con, pid = stored.con, stored.prompt_b
    nodes = "unflattened_attn_write_to_final_residual_grad" if block == "attn" else "mlp_write_to_final_residual_grad"
    got = _rows(
        con,
        f"""
        SELECT n.layer, n.value + b.value / b.final_scale
        FROM (SELECT layer, sum(value) AS value FROM {nodes} WHERE prompt_id = ? GROUP BY layer) n
        JOIN pair_join_factors(NULL, NULL, '{block}_bias') b ON b.prompt_id = ? AND b.layer = n.layer""",
        [pid, pid],
    )
    want = _rows(con, f"SELECT layer, value FROM {block}_layer_write_to_final_residual_grad WHERE prompt_id = ?", [pid])
    _assert_close(got, want, 1e-4, block)


def test_mlp_neurons_rebuild_the_mlp_output(stored: Stored) -> None:
    """sum_i a[l,t,i] W_out[l][i,:] + b_out[l] = the stored MLP block output."""
    con, pid = stored.con, stored.prompt_b
    got = _rows(
        con,
        """
        SELECT r.token, r.layer, r.node_index, r.value + b.value
        FROM resid_delta_mlp_from_mlp_post_act r JOIN prompts p USING (prompt_id)
        JOIN weights b ON b.model_id = p.model_id AND b.location = 'mlp.residual_bias' AND b.layer = r.layer
             AND b.row_index = r.node_index
        WHERE r.prompt_id = ?""",
        [pid],
    )
    want = _rows(
        con,
        "SELECT token, layer, node_index, value FROM activations WHERE prompt_id = ?"
        " AND dst = 'resid_delta_mlp' AND pass_type = 'forward'",
        [pid],
    )
    _assert_close(got, want, 1e-5, "resid_delta_mlp")


def test_act_times_grad_from_residual_gradients(stored: Stored) -> None:
    """a.grad(a) = a (W_out . grad r_mlp) and p.grad(p) = p (v W_O[h]) . grad r_attn[q]."""
    con, pid = stored.con, stored.prompt_b
    mlp_rewrite = _rows(
        con,
        """
        WITH wg AS (
            SELECT g.token, g.layer, w.row_index AS node_index, sum(w.value * g.value) AS value
            FROM activations g JOIN prompts p USING (prompt_id)
            JOIN weights w ON w.model_id = p.model_id AND w.location = 'mlp.to_residual' AND w.layer = g.layer
                 AND w.col_index = g.node_index
            WHERE g.prompt_id = ? AND g.dst = 'resid_post_mlp' AND g.pass_type = 'backward'
            GROUP BY ALL)
        SELECT a.token, a.layer, a.node_index, a.value * wg.value
        FROM activations a JOIN wg USING (token, layer, node_index)
        WHERE a.prompt_id = ? AND a.dst = 'mlp_post_act' AND a.pass_type = 'forward'""",
        [pid, pid],
    )
    mlp = _rows(con, "SELECT token, layer, node_index, value FROM mlp_act_times_grad WHERE prompt_id = ?", [pid])
    _assert_close(mlp_rewrite, mlp, 1e-4, "mlp_act_times_grad")
    attn_rewrite = _rows(
        con,
        """
        WITH m AS (SELECT m.* FROM models m JOIN prompts p USING (model_id) WHERE p.prompt_id = ?),
        wg AS (
            SELECT g.layer, g.token AS q, w.head, w.row_index AS c, sum(w.value * g.value) AS value
            FROM activations g JOIN m ON true
            JOIN weights w ON w.model_id = m.model_id AND w.location = 'attn.to_residual' AND w.layer = g.layer
                 AND w.col_index = g.node_index
            WHERE g.prompt_id = ? AND g.dst = 'resid_post_attn' AND g.pass_type = 'backward'
            GROUP BY ALL),
        vwg AS (
            SELECT wg.layer, wg.q, v.token AS k, wg.head, sum(v.value * wg.value) AS value
            FROM wg JOIN m ON true
            JOIN activations v ON v.prompt_id = ? AND v.dst = 'attn_v' AND v.pass_type = 'forward'
                 AND v.layer = wg.layer AND v.head = wg.head // (m.n_heads // m.n_kv_heads) AND v.node_index = wg.c
                 AND v.token <= wg.q
            GROUP BY ALL)
        SELECT p.token, p.token2, p.layer, p.node_index, p.value * vwg.value
        FROM activations p JOIN vwg ON vwg.layer = p.layer AND vwg.q = p.token AND vwg.k = p.token2
             AND vwg.head = p.node_index
        WHERE p.prompt_id = ? AND p.dst = 'attn_qk_probs' AND p.pass_type = 'forward'""",
        [pid] * 4,
    )
    attn = _rows(
        con,
        "SELECT token, token2, layer, node_index, value FROM unflattened_attn_act_times_grad WHERE prompt_id = ?",
        [pid],
    )
    _assert_close(attn_rewrite, attn, 1e-4, "unflattened_attn_act_times_grad")


def test_closed_form_final_residual_grad_equals_stored_gradient(stored: Stored) -> None:
    con = stored.con
    stored_g = _rows(
        con, "SELECT token, node_index, value FROM final_residual_grad WHERE prompt_id = ?", [stored.prompt_b]
    )
    closed = _rows(
        con, "SELECT token, node_index, value FROM final_residual_grad WHERE prompt_id = ?", [stored.prompt_a]
    )
    last = max(t for t, _ in closed)
    assert all(v == 0.0 for (t, _), v in stored_g.items() if t < last)
    _assert_close({k: v for k, v in stored_g.items() if k[0] == last}, closed, 1e-4, "g")


def test_direct_effects_for_a_pair_never_ingested_equal_a_fresh_ingest(stored: Stored) -> None:
    con = stored.con
    target, distractor = _token(stored, PAIR_C[0]), _token(stored, PAIR_C[1])
    on_the_fly = _rows(
        con,
        "SELECT dst, token, token2, layer, node_index, value FROM direct_effects(?, ?) WHERE prompt_id = ?",
        [target, distractor, stored.prompt_a],
    )
    ingested = _rows(
        con,
        "SELECT dst, token, token2, layer, node_index, value FROM scalars WHERE prompt_id = ? AND dst IN"
        " ('mlp_write_to_final_residual_grad', 'unflattened_attn_write_to_final_residual_grad',"
        " 'resid_post_embedding_proj_to_final_residual_grad')",
        [stored.prompt_c],
    )
    _assert_close(on_the_fly, ingested, 1e-5, "direct_effects(target, distractor)")
