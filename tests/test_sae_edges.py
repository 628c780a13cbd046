"""Edges into a latent of an SAE on the residual stream (edges_into('online_autoencoder_latent', layer, j)) equal,
prompt by prompt and edge by edge, the oracle built from transformers' modules, the test's own SAEs and
autograd (tests/oracle_sae_edges.py), on a random-weight GPT-2 with random SAEs of several formats spliced in
at each kind of residual site (the embedding, between attention and MLP, a block's output), prompts of mixed
lengths in one warehouse; the in-edge activations add up to the latent less its constant terms (the
decomposition identity), which the stored encoder bias also equals; the questions edges cannot answer are
refused in one line, among them a warehouse whose SAE encoders were not stored, until they are added."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from cli import main
from ingest.worker import IngestOptions, ingest
from queries import QueryError, Warehouse
from tests.hf_checkpoints import Checkpoint, gpt2_checkpoint
from tests.oracle_sae_edges import constant, expected_latent_in_edges, expected_latent_out_edges, reach
from tests.sae_oracle import OracleSAE
from tests.test_sae_capture import PROMPTS, Prompt, _prompts, ingest_with_saes
from warehouse import db
from warehouse.registry import locations_of

pytest.importorskip("transformers")

# as tests/test_sae_capture.py's SAES: name, format, architecture, hook, HF site kind, layer, registry location,
# its layer, d_sae, k, rescale. One SAE per residual site kind and layer: a gated SAE on the embedding, OpenAI's
# layer-normalising TopK on block 0's output, a TopK SAE rescaled by its decoder norms between attention and MLP
# of block 1; then Gemma Scope's JumpReLU (no decoder-bias subtraction) and a plain ReLU SAE on the blocks'
# outputs, the last one after every MLP's read.
SAE_SETS = {
    "gated_topk_openai": [
        ("pre0", "saelens", "gated", "blocks.0.hook_resid_pre", "resid_pre0", 0, "resid.post_emb", None, 64, None,
         False),
        ("oa_res0", "openai", "topk", "blocks.0.hook_resid_post", "resid_post", 0, "resid.post_mlp", 0, 128, 8,
         False),
        ("mid1", "saelens", "topk", "blocks.1.hook_resid_mid", "resid_mid", 1, "resid.post_attn", 1, 64, 6, True),
    ],
    "jumprelu_relu": pytest.param([
        ("res0", "gemma_scope", "jumprelu", "blocks.0.hook_resid_post", "resid_post", 0, "resid.post_mlp", 0, 128,
         None, False),
        ("res1", "saelens", "standard", "blocks.1.hook_resid_post", "resid_post", 1, "resid.post_mlp", 1, 64, None,
         False),
    ], marks=pytest.mark.slow),
}  # fmt: skip
DST = "online_autoencoder_latent"
REL = 1e-4  # float32 storage against a float64 oracle, relative to the prompt's largest |edge|
KINDS = ["resid_post_embedding", "attn_qk_probs", "attn_residual_bias", "mlp_post_act", "mlp_residual_bias"]


@dataclass
class Stored:
    checkpoint: Checkpoint
    wh: Warehouse
    saes: list[OracleSAE]
    prompts: list[Prompt]  # those ingested with the SAEs spliced in
    latents: dict[str, int]  # per SAE, the latent that fires in the most prompts
    path: Path


def _layer(sae: OracleSAE) -> str:
    return "NULL" if sae.site_layer is None else str(sae.site_layer)


@pytest.fixture(scope="module", params=list(SAE_SETS.values()), ids=list(SAE_SETS))
def stored(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    tmp = tmp_path_factory.mktemp("sae_edges")
    yield from stored_with_saes(tmp, gpt2_checkpoint(tmp / "checkpoint"), request.param)


def stored_with_saes(tmp: Path, checkpoint: Checkpoint, rows: list[tuple]) -> Iterator[Stored]:
    """The prompts ingested into tmp/wh with the SAEs of `rows` (SAE_SETS' layout) spliced in, then again with
    the input-side weights; in a session."""
    locations = locations_of(SimpleNamespace(pre_block_norms=True, post_block_norms=False, sae=False))
    _, saes, wh, run_id = ingest_with_saes(tmp, checkpoint, PROMPTS, locations, rows)
    # stored without --input-weights all: no encoder to read, said in one line; a second ingest adds them
    with pytest.raises(QueryError, match="no SAE encoders: ingest again with --input-weights all"):
        wh.sql(f"SELECT * FROM edges_into('{DST}', {_layer(saes[-1])}, 0)")
    options = IngestOptions(
        model=str(checkpoint.path),
        locations=locations,
        progress=False,
        input_weights="all",
        saes=[s.spec for s in saes],
    )
    report = ingest(tmp / "wh", PROMPTS, options)
    assert report.stored == 0, report  # every prompt was stored: only the encoders are added
    latents = {}
    for sae in saes:
        counts = wh.sql(
            "SELECT node_index FROM facts WHERE dst = ? AND layer IS NOT DISTINCT FROM ? AND forward > 0"
            " GROUP BY node_index ORDER BY count(DISTINCT prompt_id) DESC, count(*) DESC, node_index LIMIT 1",
            [DST, sae.site_layer],
            output="rows",
        )
        latents[sae.name] = counts[0][0]
    with wh.session():
        yield Stored(checkpoint, wh, saes, _prompts(wh, run_id), latents, tmp / "wh")


def _edges(wh: Warehouse, sae: OracleSAE, j: int) -> dict[int, dict[tuple, tuple[float, float]]]:
    """Every edge into latent j of `sae`, by prompt."""
    rows = wh.sql(
        "SELECT prompt_id, token, source_dst, source_layer, source_head, source_node_index, source_token, activation,"
        f" attribution FROM edges_into('{DST}', {_layer(sae)}, {j})",
        output="rows",
    )
    out: dict[int, dict[tuple, tuple[float, float]]] = {}
    for r in rows:
        out.setdefault(r[0], {})[tuple(r[1:7])] = (r[7], r[8])
    return out


def test_edges_into_an_sae_latent_match_the_oracle_prompt_by_prompt(stored: Stored) -> None:
    for sae in stored.saes:
        j, seen = stored.latents[sae.name], set()
        edges = _edges(stored.wh, sae, j)
        assert set(edges) <= {p.prompt_id for p in stored.prompts}  # no latent of an unspliced prompt
        for p in stored.prompts:
            got = edges.get(p.prompt_id, {})
            want, _ = expected_latent_in_edges(stored.checkpoint.model, sae, p.ids, p.target_id, p.distractor_id, j)
            assert set(got) == set(want), (sae.name, p.prompt_id, (set(got) ^ set(want)).pop())
            seen |= {key[1] for key in want}
            for column in (0, 1):
                scale = max((abs(v[column]) for v in want.values()), default=0.0)
                worst = max((abs(got[k][column] - want[k][column]) for k in want), default=0.0)
                assert worst <= REL * scale, (sae.name, p.prompt_id, column, worst, scale)
        # the embedding alone writes before resid_pre 0, attention and no MLP before resid_mid 0
        last_attn, last_mlp = reach(sae)
        kinds = KINDS[:1] + KINDS[1:3] * (last_attn >= 0) + KINDS[3:] * (last_mlp >= 0)
        assert sorted(seen) == sorted(kinds), (sae.name, seen)


def test_in_edge_activations_add_up_to_the_latent_less_its_constant(stored: Stored) -> None:
    for sae in stored.saes:
        j = stored.latents[sae.name]
        bias = stored.wh.sql(
            "SELECT value FROM weights WHERE location = 'autoencoder.latent_bias' AND layer IS NOT DISTINCT FROM ?"
            " AND row_index = ?",
            [sae.site_layer, j],
            output="rows",
        )
        assert bias[0][0] == pytest.approx(constant(sae, j), rel=1e-5, abs=1e-6)
        sums = stored.wh.sql(
            f"SELECT prompt_id, token, sum(activation) FROM edges_into('{DST}', {_layer(sae)}, {j})"
            " GROUP BY prompt_id, token ORDER BY prompt_id, token",
            output="rows",
        )
        fired = stored.wh.sql(
            "SELECT prompt_id, token, forward FROM facts WHERE dst = ? AND layer IS NOT DISTINCT FROM ?"
            " AND node_index = ? AND forward > 0 ORDER BY prompt_id, token",
            [DST, sae.site_layer, j],
            output="rows",
        )
        # rows where the latent fires, and only there, in every prompt that has it
        assert [r[:2] for r in sums] == [r[:2] for r in fired] and len({r[0] for r in fired}) > 1
        for (prompt_id, _, got), (_, _, latent) in zip(sums, fired, strict=True):
            expected = latent - constant(sae, j)
            assert abs(got - expected) < REL * max(1.0, abs(expected)), (sae.name, prompt_id, got, expected)


def test_edges_into_sae_latents_refuse_in_one_line(stored: Stored) -> None:
    wh, sae = stored.wh, stored.saes[0]
    d_sae = sae.w_enc.shape[1]
    for args, words in (
        ("'online_mlp_autoencoder_latent', 0, 0", "not online_mlp_autoencoder_latent"),
        (f"'{DST}', 7, 0", f"no SAE whose latents are {DST} at layer 7: it has them at layers"),
        (f"'{DST}', {_layer(sae)}, {d_sae}", f"no latent {d_sae} in the SAE"),
    ):
        with pytest.raises(QueryError, match=words):
            wh.sql(f"SELECT * FROM edges_into({args})")
    # each random SAE's thresholds make every latent fire on ~6% of these prompts' tokens; a TopK SAE's k
    # largest leave some latents silent
    for sae in stored.saes:
        silent = wh.sql(
            "SELECT min(i) FROM range(?) r(i) WHERE i NOT IN (SELECT node_index FROM facts WHERE dst = ?"
            " AND layer IS NOT DISTINCT FROM ? AND forward > 0)",
            [sae.w_enc.shape[1], DST, sae.site_layer],
            output="rows",
        )[0][0]
        if silent is not None:
            break
    if silent is None:
        assert all(s.architecture != "topk" for s in stored.saes)
        return
    with pytest.raises(QueryError, match="fires at no stored token"):
        wh.sql(f"SELECT * FROM edges_into('{DST}', {_layer(sae)}, {silent})")


def test_the_api_ranks_the_edges_into_a_latent(stored: Stored) -> None:
    sae = stored.saes[0]  # the first SAE's layer may be NULL (the embedding's)
    j, p = stored.latents[sae.name], stored.prompts[1]
    every = _edges(stored.wh, sae, j)[p.prompt_id]
    top = stored.wh.edges_into(DST, sae.site_layer, j, prompt_id=p.prompt_id, k=5, by="activation").to_pylist()
    sizes = sorted((abs(v[0]) for v in every.values()), reverse=True)[:5]
    assert [abs(r["activation"]) for r in top] == pytest.approx(sizes, rel=1e-12)
    assert {r["dst"] for r in top} == {DST}
    node = f"{DST}:{'' if sae.site_layer is None else sae.site_layer}:{j}"  # DST::J: no layer
    args = ["edges", "--db", str(stored.path), "--into", node, "--prompt-id", str(p.prompt_id), "-k", "5"]
    result = CliRunner().invoke(main, [*args, "--by", "activation", "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert len(result.output.strip().splitlines()) == 1 + len(top)


def test_edges_into_latents_of_an_unspliced_prompt_are_refused(stored: Stored) -> None:
    plain = min(p.prompt_id for p in stored.prompts) - 1  # the first ingest's last prompt: no SAE spliced in
    sae = stored.saes[0]
    with pytest.raises(db.WarehouseError, match="no edge is stored for this node, prompt and token"):
        stored.wh.edges_into(DST, sae.site_layer, stored.latents[sae.name], prompt_id=plain)


def test_sae_latents_as_sources_of_edges_into_an_mlp_neuron_match_the_oracle(stored: Stored) -> None:
    layer, neuron = 1, 5
    model = stored.checkpoint.model
    seen = set()
    for p in stored.prompts:
        rows = stored.wh.sql(
            "SELECT token, source_dst, source_layer, source_head, source_node_index, source_token, activation,"
            f" attribution FROM edges_into('mlp_post_act', {layer}, {neuron}) WHERE prompt_id = ?"
            f" AND source_dst = '{DST}'",
            [p.prompt_id],
            output="rows",
        )
        got = {tuple(r[:6]): (r[6], r[7]) for r in rows}
        want = expected_latent_out_edges(model, stored.saes, p.ids, p.target_id, p.distractor_id, layer, neuron)
        assert set(got) == set(want), (p.prompt_id, (set(got) ^ set(want)).pop())
        seen |= {key[2] for key in want}
        for column in (0, 1):
            scale = max((abs(v[column]) for v in want.values()), default=0.0)
            worst = max((abs(got[k][column] - want[k][column]) for k in want), default=0.0)
            assert worst <= REL * scale, (p.prompt_id, column, worst, scale)
    # every SAE whose site is before MLP 1 writes into it (not one on block 1's output, in the second set)
    assert seen == {s.site_layer for s in stored.saes if reach(s)[0] <= layer and reach(s)[1] < layer}
