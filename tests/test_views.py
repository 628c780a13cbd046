"""Every derived view equals, prompt by prompt, an oracle computed in transformers, and docs/DERIVED_SCALARS.md's
identities hold through the views; so do the raw values actwh computes rather than reads off a module (the
norm scales the views divide by, and the attention logits).

Four random-weight checkpoints built with transformers and ingested from their directories: a GPT-2, a
grouped-query Llama (4 query heads over 2 key/value heads, rope theta 500), a Gemma 2 (norms after attention
and the MLP, attention and final logits soft-capped hard enough to bend them, a sliding window shorter than
most prompts) and an OLMo 2 (norms after the blocks only, queries and keys normed). One ingest stores prompts
of 1 to 30 tokens with a target/distractor pair, a target alone, or no target (next-token loss), batched
together. Each warehouse holds the prompts three times: "full" (every location, both passes: the final
residual's gradient is stored), "tier1" (every location forward plus the Tier-1 gradients: the final
residual's gradient is closed-form) and "other" (tier1 with another pair for every prompt). The oracle
(tests/oracle_scalars.py) shares no code with actwh.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from ingest.prompts import PromptInput
from ingest.worker import IngestOptions, ingest
from queries import QueryError, Warehouse
from queries.catalog import dst_catalog
from tests.every_relation import assert_every_relation_answers
from tests.hf_checkpoints import Checkpoint, gemma2_checkpoint, gpt2_checkpoint, llama_checkpoint, olmo2_checkpoint
from tests.oracle_scalars import Key, expected_raw, expected_scalars, linearised_objective
from warehouse.registry import LOCATIONS, locations_of

transformers = pytest.importorskip("transformers")

PROMPTS = [
    PromptInput("The capital of France is", " Paris", " London"),
    PromptInput("When Mary and John went to the store, John gave a drink to", " Mary"),
    PromptInput("A", " Rome", " Berlin"),
    PromptInput(
        "one two three four five six seven eight nine ten eleven twelve, then the quick brown fox jumps over the"
        " lazy dog while seven bright stars shine"
    ),
    PromptInput("Rome and Berlin"),
    PromptInput("Cities: Paris, London and", " Rome", " Berlin"),
]
OTHER_PAIR = (" Berlin", " John")
CHECKPOINTS = {
    "gpt2": gpt2_checkpoint,
    "llama": llama_checkpoint,
    "gemma2": gemma2_checkpoint,
    "olmo2": olmo2_checkpoint,
}
POST_BLOCK_NORMS = {"gemma2", "olmo2"}  # the checkpoints that norm block outputs
NO_PRE_BLOCK_NORMS = {"olmo2"}  # the checkpoints whose blocks read the residual as it is


def every_location(model: str) -> list[str]:
    switches = SimpleNamespace(  # SAE locations exist only with an SAE spliced in (tests/test_sae_capture.py)
        pre_block_norms=model not in NO_PRE_BLOCK_NORMS, post_block_norms=model in POST_BLOCK_NORMS, sae=False
    )
    return locations_of(switches)


def tier1(model: str) -> list[str]:
    forward = [f"{name}:forward" for name in every_location(model)]
    return [*forward, "mlp.post_act:backward", "attn.qk_probs:backward", "resid.post_emb:backward"]


DIRECT_EFFECT_VIEWS = (
    "mlp_write_to_final_residual_grad",
    "unflattened_attn_write_to_final_residual_grad",
    "resid_post_embedding_proj_to_final_residual_grad",
)
# A logit difference can be far smaller than the logits it is taken from, whose errors it inherits: the
# checkpoints' logits have unit spread, so these are measured against max(|value|, 1).
LOGIT_SCALE_VIEWS = ("logit_diff", "loss")
# Norm scales and attention logits: worst observed 1.1e-6 of the layer's largest |value|.
RAW_REL = 1e-5
# Relative to the largest |value| of the view for the prompt. float32 storage against a float64 oracle:
# the worst observed is 7e-6 (act-times-grad); 1e-4 leaves headroom for other CPUs' kernels and is still
# far below what a wrong weight, head or token gives (1e-2 and more).
REL = 1e-4


def dst(name: str) -> str:
    return LOCATIONS[name].dst


@dataclass(frozen=True)
class Prompt:
    prompt_id: int
    text: str
    ids: list[int]
    target_id: int | None
    distractor_id: int | None


@dataclass
class Stored:
    checkpoint: Checkpoint
    wh: Warehouse
    runs: dict[str, list[Prompt]]  # "full", "tier1", "other": the prompts of that ingest, in PROMPTS order


def _ingest(path: Path, model: Path, prompts: list[PromptInput], locations: list[str]) -> int:
    options = IngestOptions(model=str(model), locations=locations, progress=False, batch_size=8)
    report = ingest(path, prompts, options)
    assert report.stored == len(prompts) and not report.skipped, report
    return report.run_id


def _prompts(wh: Warehouse, run_id: int) -> list[Prompt]:
    rows = wh.sql(
        "SELECT prompt_id, text, target_id, distractor_id FROM prompts WHERE run_id = ? ORDER BY prompt_id",
        [run_id],
        output="rows",
    )
    out = []
    for prompt_id, text, target_id, distractor_id in rows:
        ids = wh.sql("SELECT token_id FROM tokens WHERE prompt_id = ? ORDER BY token", [prompt_id], output="rows")
        out.append(Prompt(prompt_id, text, [i for (i,) in ids], target_id, distractor_id))
    return out


@pytest.fixture(scope="module", params=list(CHECKPOINTS))
def stored(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    tmp = tmp_path_factory.mktemp(request.param)
    checkpoint = CHECKPOINTS[request.param](tmp / "checkpoint")
    path = tmp / "views.duckdb"
    other = [PromptInput(p.text, *OTHER_PAIR) for p in PROMPTS]
    run_ids = {
        "full": _ingest(path, checkpoint.path, PROMPTS, every_location(request.param)),
        "tier1": _ingest(path, checkpoint.path, PROMPTS, tier1(request.param)),
        "other": _ingest(path, checkpoint.path, other, tier1(request.param)),
    }
    wh = Warehouse(path)
    with wh.session():
        runs = {name: _prompts(wh, run_id) for name, run_id in run_ids.items()}
        for prompts in runs.values():
            assert [p.text for p in prompts] == [p.text for p in PROMPTS]
        lengths = {len(p.ids) for p in runs["full"]}
        assert min(lengths) == 1 and max(lengths) >= 20 and len(lengths) >= 4, lengths
        # attention far from uniform (where a wrong key or head would hardly show): past the fourth token
        # a uniform head's largest probability is at most 1/4
        sharpness = wh.sql(
            "SELECT avg(p) FROM (SELECT max(value) AS p FROM activations WHERE dst = ? AND pass_type = 'forward'"
            " AND token >= 4 GROUP BY prompt_id, layer, token, node_index)",
            [dst("attn.qk_probs")],
            output="rows",
        )[0][0]
        assert sharpness > 0.6, sharpness
        if request.param == "gemma2":  # the final cap bends the objective's logits (slope 1 is no cap)
            query = "SELECT min(least(target_slope, distractor_slope)) FROM prompt_objectives(NULL, NULL)"
            slope = wh.sql(query, output="rows")[0][0]
            assert slope < 0.5, slope
        yield Stored(checkpoint, wh, runs)


def _by_prompt(wh: Warehouse, query: str, params: list | None = None) -> dict[int, dict[tuple, float]]:
    """Rows (prompt_id, *key, value) grouped by prompt."""
    out: dict[int, dict[tuple, float]] = defaultdict(dict)
    for prompt_id, *key, value in wh.sql(query, params or [], output="rows"):
        out[prompt_id][tuple(key)] = value
    return out


def _assert_close(
    got: dict[tuple, float], want: dict[tuple, float], what: str, rel: float = REL, floor: float = 0.0
) -> float:
    """Same keys, values within rel x max(max|want|, floor); returns the error in those units."""
    missing, extra = sorted(set(want) - set(got), key=str), sorted(set(got) - set(want), key=str)
    assert not missing and not extra, f"{what}: {len(missing)} rows missing, e.g. {missing[:3]}; extra {extra[:3]}"
    scale = max(max(abs(v) for v in want.values()), floor) or 1.0
    worst = max(abs(got[k] - want[k]) for k in want) / scale
    assert worst <= rel, f"{what}: max |diff| {worst:.3g} x max|value| > {rel:g}"
    return worst


def _derived_views(wh: Warehouse) -> dict[str, str]:
    """Derived dst -> the node type its view file declares; the spliced SAEs' views (online_*, no SAE in
    these warehouses) are checked in tests/test_sae_capture.py and tests/test_sae_capped.py."""
    table = wh.dsts()
    kinds = zip(table["dst"].to_pylist(), table["kind"].to_pylist(), strict=True)
    names = {name for name, kind in kinds if kind == "derived" and not name.startswith("online_")}
    return {info.dst: info.node_type for info in dst_catalog() if info.dst in names}


def test_every_derived_view_matches_the_oracle_prompt_by_prompt(stored: Stored) -> None:
    """Each view's rows for each prompt (full and tier1) are exactly the oracle's keys, with its values."""
    wh = stored.wh
    views = _derived_views(wh)
    rows = {
        view: _by_prompt(wh, f"SELECT prompt_id, token, token2, layer, head, node_index, value FROM {view}")
        for view in views
    }
    node_types = {
        view: {t for (t,) in wh.sql(f"SELECT DISTINCT node_type::VARCHAR FROM {view}", output="rows")} for view in views
    }
    through_union = _by_prompt(wh, "SELECT prompt_id, dst::VARCHAR, count(*) FROM scalars GROUP BY ALL")
    produced: set[str] = set()
    worst: dict[str, float] = defaultdict(float)
    for kind in ("full", "tier1"):
        for prompt in stored.runs[kind]:
            expected = expected_scalars(
                stored.checkpoint.model, prompt.ids, prompt.target_id, prompt.distractor_id, kind == "full"
            )
            assert set(expected) <= set(views), set(expected) - set(views)
            for view in views:
                what = f"{view}, {kind} prompt {prompt.text!r} ({len(prompt.ids)} tokens)"
                want: dict[Key, float] = expected.get(view, {})
                got = rows[view].get(prompt.prompt_id, {})
                if not want:
                    assert not got, f"{what}: {len(got)} rows where none are defined"
                    continue
                floor = 1.0 if view in LOGIT_SCALE_VIEWS else 0.0
                worst[view] = max(worst[view], _assert_close(got, want, what, floor=floor))
                assert through_union[prompt.prompt_id].get((view,)) == len(want), what
            produced |= set(expected)
    assert produced == set(views), f"views no prompt exercised: {set(views) - produced}"
    for view, types in node_types.items():
        assert types == {views[view]}, f"{view}: node types {types}, header says {views[view]}"
    print("\nworst relative error per view:", {k: f"{v:.1g}" for k, v in sorted(worst.items(), key=lambda kv: -kv[1])})


def test_norm_scales_and_attention_logits_match_transformers(stored: Stored) -> None:
    """The raw values actwh computes rather than reads off a module, which the views divide by or build
    on: each norm's scale as the transformers norm applied it (the post-block norms' too), and q.k times
    the model's scaling, soft-capped where the model caps it."""
    model_type = stored.checkpoint.model.config.model_type
    names = ("resid.ln_f.scale", "attn.qk_logits")
    if model_type not in NO_PRE_BLOCK_NORMS:
        names += ("attn_ln.scale", "mlp_ln.scale")
    if model_type in POST_BLOCK_NORMS:
        names += ("attn_post_ln.scale", "mlp_post_ln.scale")
    rows = {
        name: _by_prompt(
            stored.wh,
            "SELECT prompt_id, token, token2, layer, head, node_index, value FROM activations"
            " WHERE dst = ? AND pass_type = 'forward'",
            [dst(name)],
        )
        for name in names
    }
    for prompt in stored.runs["full"]:
        expected = expected_raw(stored.checkpoint.model, prompt.ids, prompt.target_id, prompt.distractor_id)
        assert set(expected) == set(names)
        for name in names:
            # per layer: a layer's logits are far larger than another's in these checkpoints
            for layer in {key[2] for key in expected[name]}:
                want = {k: v for k, v in expected[name].items() if k[2] == layer}
                got = {k: v for k, v in rows[name][prompt.prompt_id].items() if k[2] == layer}
                _assert_close(got, want, f"{name} layer {layer}, prompt {prompt.text!r}", RAW_REL)


def _targets(stored: Stored, kind: str) -> list[Prompt]:
    return [p for p in stored.runs[kind] if p.target_id is not None]


def _one_per_prompt(wh: Warehouse, query: str, params: list | None = None) -> dict[int, float]:
    return {prompt_id: value for prompt_id, value in wh.sql(query, params or [], output="rows")}


def test_direct_effects_decompose_the_objective(stored: Stored) -> None:
    """Per prompt with a target: sum of every node's direct effect + every block bias's = the objective
    linearised at the final residual, sum_v coef_v c_v (z_v - beta_f . W_U[:,v]) from transformers
    (L - beta_f . (W_U[:,t] - W_U[:,d]) without a soft cap; c_v the capped logit's slope)."""
    wh = stored.wh
    effects = _one_per_prompt(
        wh, f"SELECT prompt_id, sum(value) FROM scalars WHERE dst IN {DIRECT_EFFECT_VIEWS} GROUP BY prompt_id"
    )
    biases = _one_per_prompt(
        wh,
        "SELECT prompt_id, sum(value) FROM (SELECT * FROM bias_direct_effects('attn', NULL, NULL)"
        " UNION ALL SELECT * FROM bias_direct_effects('mlp', NULL, NULL)) GROUP BY prompt_id",
    )
    for prompt in _targets(stored, "tier1"):
        pid = prompt.prompt_id
        want = linearised_objective(stored.checkpoint.model, prompt.ids, prompt.target_id, prompt.distractor_id)
        closed = effects[pid] + biases[pid] - want
        assert abs(closed) <= 1e-4 * abs(want), f"{prompt.text!r}: off by {closed:.3g} of {want:.3g}"


@pytest.mark.parametrize("block", ["attn", "mlp"])
def test_node_writes_sum_to_the_block_output(stored: Stored, block: str) -> None:
    """Per layer and prompt with a target: the nodes' direct effects plus the block's bias term equal the
    block output's."""
    nodes = "unflattened_attn_write_to_final_residual_grad" if block == "attn" else "mlp_write_to_final_residual_grad"
    got = _by_prompt(
        stored.wh,
        f"""
        SELECT n.prompt_id, n.layer, n.value + b.value
        FROM (SELECT prompt_id, layer, sum(value) AS value FROM {nodes} GROUP BY ALL) n
        JOIN bias_direct_effects('{block}', NULL, NULL) b ON b.prompt_id = n.prompt_id AND b.layer = n.layer""",
    )
    want = _by_prompt(stored.wh, f"SELECT prompt_id, layer, value FROM {block}_layer_write_to_final_residual_grad")
    for prompt in _targets(stored, "full"):
        _assert_close(got[prompt.prompt_id], want[prompt.prompt_id], f"{block} {prompt.text!r}")


def test_mlp_neurons_rebuild_the_mlp_output(stored: Stored) -> None:
    """sum_i a[l,t,i] W_out[l][i,:] + b_out[l] = the stored MLP block output, every prompt; with a norm
    after the MLP the bias too is multiplied by its gain and divided by its scale."""
    got = _by_prompt(
        stored.wh,
        f"""
        SELECT r.prompt_id, r.token, r.layer, r.node_index,
               r.value + b.value * coalesce(g.value, 1) / coalesce(s.value, 1)
        FROM resid_delta_mlp_from_mlp_post_act r JOIN prompts p USING (prompt_id)
        JOIN weights b ON b.model_id = p.model_id AND b.location = 'mlp.residual_bias' AND b.layer = r.layer
             AND b.row_index = r.node_index
        LEFT JOIN weights g ON g.model_id = p.model_id AND g.location = 'layer_norm_gain.post_mlp' AND g.layer = r.layer
             AND g.row_index = r.node_index
        LEFT JOIN activations s ON s.prompt_id = r.prompt_id AND s.dst = '{dst("mlp_post_ln.scale")}'
             AND s.pass_type = 'forward' AND s.layer = r.layer AND s.token = r.token""",
    )
    want = _by_prompt(
        stored.wh,
        "SELECT prompt_id, token, layer, node_index, value FROM activations WHERE dst = ? AND pass_type = 'forward'",
        [dst("resid.delta_mlp")],
    )
    for prompt in stored.runs["full"]:
        _assert_close(got[prompt.prompt_id], want[prompt.prompt_id], f"resid_delta_mlp {prompt.text!r}", 1e-5)


def _block_output_grad(block: str, residual: str) -> str:
    """SQL rows (prompt_id, token, layer, node_index, value): dL/d(block output before any norm after it),
    from the stored gradient of the residual the block joins. With an RMSNorm after the block (output
    x, gain y, scale s, what joins the residual D = y x / s) that is the norm's Jacobian applied:
    (y_d g_d - (D_d / y_d) mean_e(D_e g_e)) / s; without one, the residual's gradient itself."""
    return f"""
        SELECT g.prompt_id, g.token, g.layer, g.node_index,
               CASE WHEN s.value IS NULL THEN g.value
                    ELSE (y.value * g.value - dl.value / y.value
                          * avg(dl.value * g.value) OVER (PARTITION BY g.prompt_id, g.token, g.layer)) / s.value
               END AS value
        FROM activations g JOIN prompts p USING (prompt_id)
        LEFT JOIN activations s ON s.prompt_id = g.prompt_id AND s.dst = '{dst(f"{block}_post_ln.scale")}'
             AND s.pass_type = 'forward' AND s.layer = g.layer AND s.token = g.token
        LEFT JOIN activations dl ON dl.prompt_id = g.prompt_id AND dl.dst = '{dst(f"resid.delta_{block}")}'
             AND dl.pass_type = 'forward' AND dl.layer = g.layer AND dl.token = g.token AND dl.node_index = g.node_index
        LEFT JOIN weights y ON y.model_id = p.model_id AND y.location = 'layer_norm_gain.post_{block}'
             AND y.layer = g.layer AND y.row_index = g.node_index
        WHERE g.dst = '{dst(residual)}' AND g.pass_type = 'backward'"""


def test_act_times_grad_from_residual_gradients(stored: Stored) -> None:
    """a.grad(a) = a (W_out . grad r_mlp) and p.grad(p) = p (v W_O[h]) . grad r_attn[q], every prompt and
    both objectives; query head h reads key/value head h // (H / H_kv). With norms after the blocks the
    gradient passes through that norm's Jacobian (its scale is not held in the backward pass)."""
    wh = stored.wh
    mlp_rewrite = _by_prompt(
        wh,
        f"""
        WITH wg AS (
            SELECT g.prompt_id, g.token, g.layer, w.row_index AS node_index, sum(w.value * g.value) AS value
            FROM ({_block_output_grad("mlp", "resid.post_mlp")}) g JOIN prompts p USING (prompt_id)
            JOIN weights w ON w.model_id = p.model_id AND w.location = 'mlp.to_residual' AND w.layer = g.layer
                 AND w.col_index = g.node_index
            GROUP BY ALL)
        SELECT a.prompt_id, a.token, a.layer, a.node_index, a.value * wg.value
        FROM activations a JOIN wg USING (prompt_id, token, layer, node_index)
        WHERE a.dst = '{dst("mlp.post_act")}' AND a.pass_type = 'forward'""",
    )
    mlp = _by_prompt(wh, "SELECT prompt_id, token, layer, node_index, value FROM mlp_act_times_grad")
    attn_rewrite = _by_prompt(
        wh,
        f"""
        WITH wg AS (
            SELECT g.prompt_id, g.layer, g.token AS q, w.head, w.row_index AS c, sum(w.value * g.value) AS value
            FROM ({_block_output_grad("attn", "resid.post_attn")}) g JOIN prompts p USING (prompt_id)
            JOIN weights w ON w.model_id = p.model_id AND w.location = 'attn.to_residual' AND w.layer = g.layer
                 AND w.col_index = g.node_index
            GROUP BY ALL),
        vwg AS (
            SELECT wg.prompt_id, wg.layer, wg.q, v.token AS k, wg.head, sum(v.value * wg.value) AS value
            FROM wg JOIN prompts p USING (prompt_id) JOIN models m USING (model_id)
            JOIN activations v ON v.prompt_id = wg.prompt_id AND v.dst = '{dst("attn.v")}' AND v.pass_type = 'forward'
                 AND v.layer = wg.layer AND v.head = wg.head // (m.n_heads // m.n_kv_heads) AND v.node_index = wg.c
                 AND v.token <= wg.q
            GROUP BY ALL)
        SELECT p.prompt_id, p.token, p.token2, p.layer, p.node_index, p.value * vwg.value
        FROM activations p JOIN vwg ON vwg.prompt_id = p.prompt_id AND vwg.layer = p.layer AND vwg.q = p.token
             AND vwg.k = p.token2 AND vwg.head = p.node_index
        WHERE p.dst = '{dst("attn.qk_probs")}' AND p.pass_type = 'forward'""",
    )
    attn = _by_prompt(
        wh, "SELECT prompt_id, token, token2, layer, node_index, value FROM unflattened_attn_act_times_grad"
    )
    for prompt in stored.runs["full"]:
        pid = prompt.prompt_id
        _assert_close(mlp_rewrite[pid], mlp[pid], f"mlp_act_times_grad {prompt.text!r}")
        _assert_close(attn_rewrite[pid], attn[pid], f"unflattened_attn_act_times_grad {prompt.text!r}")


def test_closed_form_final_residual_grad_equals_stored_gradient(stored: Stored) -> None:
    """With a target, the stored gradient is zero before the last token and equals the closed form there."""
    grads = _by_prompt(stored.wh, "SELECT prompt_id, token, node_index, value FROM final_residual_grad")
    for full, tier1 in zip(_targets(stored, "full"), _targets(stored, "tier1"), strict=True):
        stored_g, closed = grads[full.prompt_id], grads[tier1.prompt_id]
        last = len(full.ids) - 1
        assert {t for t, _ in closed} == {last}
        assert all(v == 0.0 for (t, _), v in stored_g.items() if t < last)
        _assert_close({k: v for k, v in stored_g.items() if k[0] == last}, closed, f"g {full.text!r}")


def test_direct_effects_for_a_pair_never_ingested_equal_a_fresh_ingest(stored: Stored) -> None:
    """direct_effects(t, d) on the tier1 prompts (targets or none) = the views on the same prompts ingested
    with that pair."""
    wh = stored.wh
    target, distractor = (stored.runs["other"][0].target_id, stored.runs["other"][0].distractor_id)
    on_the_fly = _by_prompt(
        wh, "SELECT prompt_id, dst::VARCHAR, token, token2, layer, node_index, value FROM direct_effects(?, ?)",
        [target, distractor],
    )  # fmt: skip
    ingested = _by_prompt(
        wh,
        "SELECT prompt_id, dst::VARCHAR, token, token2, layer, node_index, value FROM scalars"
        f" WHERE dst IN {DIRECT_EFFECT_VIEWS}",
    )
    for tier1, other in zip(stored.runs["tier1"], stored.runs["other"], strict=True):
        _assert_close(on_the_fly[tier1.prompt_id], ingested[other.prompt_id], f"direct_effects {tier1.text!r}", 1e-5)


def test_factors_from_the_weights_equal_the_factors_stored_at_ingest(stored: Stored) -> None:
    """weight_factors (SQL over the stored weight rows, for a token whose factors the warehouse does not
    hold) equals direction_factors (torch at ingest) for every stored token, kind and node: the two ways a
    pair's factors reach the direct effects (direct_effects reads the stored ones where it can)."""
    wh = stored.wh
    tokens = wh.sql("SELECT DISTINCT token_id FROM direction_factors ORDER BY 1", [], "rows")
    assert len(tokens) >= 4
    for (token,) in tokens:
        key = "kind, layer, head, node_index, value"
        computed = wh.sql(f"SELECT {key} FROM weight_factors(?::INTEGER, NULL, true)", [token], "rows")
        kept = wh.sql(f"SELECT {key} FROM direction_factors WHERE token_id = ?", [token], "rows")
        for kind in {k for k, *_ in kept}:
            _assert_close(
                {tuple(r[1:-1]): r[-1] for r in computed if r[0] == kind},
                {tuple(r[1:-1]): r[-1] for r in kept if r[0] == kind},
                f"token {token} {kind} factors",
                1e-5,
            )


def test_direct_effects_for_a_token_without_an_unembedding_column_is_an_error(stored: Stored) -> None:
    """A pair whose target or distractor has no stored unembedding column raises, naming the fix: no rows
    would read as 'no effect'."""
    wh = stored.wh
    stored_columns = wh.sql("SELECT DISTINCT col_index FROM weights WHERE location = 'unembedding'", [], "rows")
    vocab_size = wh.sql("SELECT vocab_size FROM models", [], "rows")[0][0]
    absent = min(set(range(vocab_size)) - {c for (c,) in stored_columns})
    target = stored.runs["full"][0].target_id
    for pair in ((absent, None), (target, absent)):
        with pytest.raises(QueryError, match=f"token {absent} has no unembedding column.*--unembedding all"):
            wh.direct_effects(*pair)


def test_every_view_and_table_macro_answers_or_says_why(stored: Stored) -> None:
    """Each view and table macro of the file, enumerated from its catalog, answers or says why in one line
    (tests/every_relation.py): a broken view fails here, not when someone first queries it."""
    wh = stored.wh
    first = stored.runs["other"][0]
    stored_columns = wh.sql("SELECT DISTINCT col_index FROM weights WHERE location = 'unembedding'", [], "rows")
    columns = {c for (c,) in stored_columns}
    absent = min(set(range(max(columns) + 2)) - columns)
    assert_every_relation_answers(wh, (first.target_id, first.distractor_id), absent)


# The reference node table's columns, per node type: the view each column reads.
NODE_TABLE_VIEWS = {
    "mlp_neuron": ("mlp_post_act", "mlp_write_norm", "mlp_write_to_final_residual_grad", "mlp_act_times_grad"),
    "attention_head": (
        "attn_qk_probs",
        "unflattened_attn_write_norm",
        "unflattened_attn_write_to_final_residual_grad",
        "unflattened_attn_act_times_grad",
    ),
}


def test_node_table_columns_are_each_nodes_view_values(stored: Stored) -> None:
    """Every cell of one prompt's node table (the top and bottom 6 by act_times_grad, then by direct_effect, MLP
    neurons and attention nodes together) is its node's row of the column's view: the table reads the ranked
    nodes only, and a filter that missed one would leave its cell NULL or another node's."""
    wh = stored.wh
    longest = max((p for p in stored.runs["full"] if p.target_id is not None), key=lambda p: len(p.ids))
    filled: dict[str, int] = defaultdict(int)
    rows = [
        row
        for by in ("act_times_grad", "direct_effect")
        for row in wh.top_nodes(longest.prompt_id, by, k=6).to_pylist()
    ]
    assert len(rows) == 24
    for row in rows:
        for column, view in zip(
            ("activation", "write_norm", "direct_effect", "act_times_grad"),
            NODE_TABLE_VIEWS[row["node_type"]],
            strict=True,
        ):
            source = f"activations WHERE dst = '{view}' AND" if column == "activation" else f"{view} WHERE"
            expected = wh.sql(
                f"SELECT value FROM {source} pass_type = 'forward' AND prompt_id = ? AND layer = ? AND token = ?"
                " AND node_index = ? AND token2 IS NOT DISTINCT FROM ? AND head IS NOT DISTINCT FROM ?",
                [longest.prompt_id, row["layer"], row["token"], row["node_index"], row["token2"], row["head"]],
                output="rows",
            )
            if not expected:  # e.g. a direct effect away from the last token, where the view has no row
                assert row[column] is None, (row, column)
                continue
            assert len(expected) == 1 and row[column] == pytest.approx(expected[0][0], rel=1e-6), (row, column)
            filled[column] += 1
    assert all(filled[c] for c in ("activation", "write_norm", "direct_effect", "act_times_grad")), filled
