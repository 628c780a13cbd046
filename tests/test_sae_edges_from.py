"""Edges out of a node with SAEs on the residual stream (edges_from, queries/support/63_out_edges.sql), on the
warehouses of tests/test_sae_edges.py (random-weight GPT-2, random SAEs of several formats at each kind of residual
site, prompts of mixed lengths): out of an SAE latent into every MLP neuron and every attention head's value,
query and key side after its site, and out of an MLP neuron, an attention node or the embedding into the latents
of the SAEs after it, equal prompt by prompt to the oracles built from transformers' modules, the test's own SAEs
and autograd (tests/oracle_sae_edges.py, tests/oracle_attention_edges.py with the latents' writes as further
sources), and to edges_into's rows for the same pair, reaching every reader and no other; what they cannot
answer is refused in one line."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from cli import main
from queries import QueryError
from tests.edge_rows import assert_edges_close
from tests.hf_checkpoints import llama_checkpoint
from tests.oracle_attention_edges import expected_qk_in_edges, expected_value_in_edges
from tests.oracle_sae_edges import expected_latent_in_edges, expected_latent_out_edges, latent_writes, reach
from tests.sae_oracle import OracleSAE
from tests.test_sae_edges import DST, REL, Stored, stored, stored_with_saes  # noqa: F401 - one warehouse per SAE set

COLUMNS = (
    "prompt_id, token, token2, dst, layer, head, node_index, source_dst, source_layer, source_head, source_node_index,"
    " source_token, activation, attribution"
)
SIDES = ("value", "query", "key")
# as tests/test_sae_edges.py's SAE_SETS, on Llama's modules
LLAMA_SAES = [
    ("pre0", "saelens", "gated", "blocks.0.hook_resid_pre", "gemma_resid_pre0", 0, "resid.post_emb", None, 64, None,
     False),
    ("oa_res0", "openai", "topk", "blocks.0.hook_resid_post", "gemma_resid_post", 0, "resid.post_mlp", 0, 128, 8,
     False),
    ("mid1", "saelens", "topk", "blocks.1.hook_resid_mid", "llama_resid_mid", 1, "resid.post_attn", 1, 64, 6, True),
]  # fmt: skip
# upstream nodes, as edges_from takes them
SOURCES = {
    "mlp": ("mlp_post_act", 0, 3),
    "mlp_last": ("mlp_post_act", 1, 3),  # read by the latents of an SAE on the last block's output alone
    "attn": ("attn_qk_probs", 0, 1),
    "embedding": ("resid_post_embedding", None, None),
}


def _call(node: tuple) -> str:
    return ", ".join("NULL" if v is None else repr(v) for v in node)


def _first_mlp(sae: OracleSAE) -> int:
    """The first MLP layer that reads the SAE's latents' writes."""
    return reach(sae)[1] + 1


def _close(got: dict, want: dict, label: object, rel: float) -> None:
    # a side whose edges are all below 1e-6 (a saturated softmax's) is rounding: compared at rel * 1e-6
    assert_edges_close(got, want, label, rel, floor=1e-6)


def _rows(data: Stored, sql: str, params: list | None = None) -> dict[tuple, tuple[float, float]]:
    return {tuple(r[:12]): (r[12], r[13]) for r in data.wh.sql(sql, params or [], output="rows")}


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    """A grouped-query Llama warehouse with SAEs on the embedding, between block 1's attention and MLP (a gated
    MLP reads its latents) and on block 0's output (a layer-normalising TopK SAE)."""
    tmp = tmp_path_factory.mktemp("sae_edges_from_llama")
    yield from stored_with_saes(tmp, llama_checkpoint(tmp / "checkpoint"), LLAMA_SAES)


def test_edges_out_of_an_sae_latent_match_the_oracle_and_edges_into(stored: Stored) -> None:  # noqa: F811
    _check_latent_into_mlp_neurons(stored)


def test_edges_out_of_an_sae_latent_in_grouped_query_llama(llama: Stored) -> None:
    _check_latent_into_mlp_neurons(llama)
    _check_latent_into_attention_sides(llama)


def _check_latent_into_mlp_neurons(stored: Stored) -> None:  # noqa: F811
    wh = stored.wh
    n_layers, d_mlp = wh.sql("SELECT n_layers, d_mlp FROM models", output="rows")[0]
    checked = 0
    for sae in stored.saes:
        if _first_mlp(sae) >= n_layers:
            with pytest.raises(QueryError, match="is after the last block's reads: no MLP neuron or attention head"):
                wh.sql(f"SELECT * FROM edges_from('{DST}', {sae.site_layer}, 0)")
            continue
        i = stored.latents[sae.name]
        node = (DST, sae.site_layer, i)
        out = _rows(stored, f"SELECT {COLUMNS} FROM edges_from({_call(node)}) WHERE dst = 'mlp_post_act'")
        source = "source_layer IS NOT DISTINCT FROM ? AND source_node_index = ? AND source_dst = ?"
        # every MLP neuron after the site, at every stored (prompt, token) where the latent fires
        fired = wh.sql(
            "SELECT prompt_id, token FROM facts WHERE dst = ? AND layer IS NOT DISTINCT FROM ? AND node_index = ?"
            " AND forward IS NOT NULL",
            [DST, sae.site_layer, i],
            output="rows",
        )
        layers = range(_first_mlp(sae), n_layers)
        every = {(*f, L, j) for f in fired for L in layers for j in range(d_mlp)}
        assert {(k[0], k[1], k[4], k[6]) for k in out} == every
        for layer in layers:
            for j in (0, 5, d_mlp - 1):
                into = _rows(
                    stored,
                    f"SELECT {COLUMNS} FROM edges_into('mlp_post_act', {layer}, {j}) WHERE {source}",
                    [sae.site_layer, i, DST],
                )
                # edges_into rounds the latent times its input's std to float32 (6e-8) in the activation
                got = {k: v for k, v in out.items() if k[4] == layer and k[6] == j}
                _close(got, into, (sae.name, layer, j), 1e-6)
        layer, j = layers[0], 5
        for p in stored.prompts:
            model = stored.checkpoint.model
            want = expected_latent_out_edges(model, [sae], p.ids, p.target_id, p.distractor_id, layer, j)
            want = {k: v for k, v in want.items() if k[4] == i}
            got = {(k[1], *k[7:12]): v for k, v in out.items() if k[0] == p.prompt_id and k[4] == layer and k[6] == j}
            _close(got, want, (sae.name, p.prompt_id), REL)
            checked += len(want)
    assert checked


@pytest.mark.parametrize("source", list(SOURCES))
def test_edges_from_into_sae_latents_match_the_oracle_and_edges_into(stored: Stored, source: str) -> None:  # noqa: F811
    node = SOURCES[source]
    wh = stored.wh
    key = (node[0], node[1], node[2] if source == "attn" else None, node[2])
    # the SAEs whose site is after the write, and every token where each of their latents fires
    after = [
        s
        for s in stored.saes
        if source == "embedding" or reach(s)[0 if source == "attn" else 1] >= node[1]  # type: ignore[operator]
    ]
    if not after:  # a neuron of the last layer with no SAE on its block's output: nothing reads it
        with pytest.raises(QueryError, match="is in the last layer: no MLP neuron reads its write"):
            wh.sql(f"SELECT * FROM edges_from({_call(node)})")
        return
    out = _rows(stored, f"SELECT {COLUMNS} FROM edges_from({_call(node)}) WHERE dst = ?", [DST])
    fired = set()
    for sae in after:
        rows = wh.sql(
            "SELECT prompt_id, token, layer, node_index FROM facts WHERE dst = ? AND layer IS NOT DISTINCT FROM ?"
            " AND forward > 0",
            [DST, sae.site_layer],
            output="rows",
        )
        fired |= {tuple(r) for r in rows}
    assert {(k[0], k[1], k[4], k[6]) for k in out} == fired
    source_filter = (
        "source_dst = ? AND source_layer IS NOT DISTINCT FROM ? AND source_head IS NOT DISTINCT FROM ?"
        " AND source_node_index IS NOT DISTINCT FROM ?"
    )
    for sae in after:
        j = stored.latents[sae.name]
        layer = "NULL" if sae.site_layer is None else sae.site_layer
        sql = f"SELECT {COLUMNS} FROM edges_into('{DST}', {layer}, {j}) WHERE {source_filter}"
        into = _rows(stored, sql, list(key))
        mine = {k: v for k, v in out.items() if k[4] == sae.site_layer and k[6] == j}
        _close(mine, into, (sae.name, source), 1e-9)
        for p in stored.prompts:
            every, _ = expected_latent_in_edges(stored.checkpoint.model, sae, p.ids, p.target_id, p.distractor_id, j)
            want = {k: v for k, v in every.items() if k[1:5] == key}
            got = {(k[1], *k[7:12]): v for k, v in mine.items() if k[0] == p.prompt_id}
            _close(got, want, (sae.name, source, p.prompt_id), REL)


def test_edges_out_of_sae_latents_refuse_in_one_line(stored: Stored) -> None:  # noqa: F811
    wh, sae = stored.wh, stored.saes[0]
    layer = "NULL" if sae.site_layer is None else sae.site_layer
    d_sae = sae.w_enc.shape[1]
    for args, words in (
        (f"'{DST}', 7, 0", f"no SAE whose latents are {DST} at layer 7: it has them at layers"),
        (f"'{DST}', {layer}, {d_sae}", f"no latent {d_sae} in the SAE"),
        ("'online_mlp_autoencoder_latent', 0, 0", "not online_mlp_autoencoder_latent"),
    ):
        with pytest.raises(QueryError, match=words):
            wh.sql(f"SELECT * FROM edges_from({args})")
    for sae in stored.saes:
        layer = "NULL" if sae.site_layer is None else sae.site_layer
        silent = wh.sql(
            "SELECT min(i) FROM range(?) r(i) WHERE i NOT IN (SELECT node_index FROM facts WHERE dst = ?"
            " AND layer IS NOT DISTINCT FROM ? AND forward > 0)",
            [sae.w_enc.shape[1], DST, sae.site_layer],
            output="rows",
        )[0][0]
        if silent is not None and _first_mlp(sae) < 2:
            with pytest.raises(QueryError, match="fires at no stored token: every edge out of it is 0"):
                wh.sql(f"SELECT * FROM edges_from('{DST}', {layer}, {silent})")


def test_edges_out_of_an_sae_latent_into_attention_sides_match_the_oracle_and_edges_into(stored: Stored) -> None:  # noqa: F811
    _check_latent_into_attention_sides(stored)


def _check_latent_into_attention_sides(stored: Stored) -> None:  # noqa: F811
    wh, model = stored.wh, stored.checkpoint.model
    n_layers, n_heads = wh.sql("SELECT n_layers, n_heads FROM models", output="rows")[0]
    source = "source_dst = ? AND source_layer IS NOT DISTINCT FROM ? AND source_node_index = ?"
    checked = 0
    for sae in stored.saes:
        if _first_mlp(sae) >= n_layers:  # after the last block: refused (checked with the MLP neurons)
            continue
        i, first = stored.latents[sae.name], reach(sae)[0] + 1  # a block's attention reads before its site
        node = (DST, sae.site_layer, i)
        out = _rows(stored, f"SELECT {COLUMNS} FROM edges_from({_call(node)}) WHERE dst LIKE 'attn_%'")
        heads = [(layer, h) for layer in range(first, n_layers) for h in range(n_heads)]
        readers = {(f"attn_{side}", layer, h) for layer, h in heads for side in SIDES}
        assert {(k[3], k[4], k[6]) for k in out} == readers
        before = {(f"attn_{side}", layer, 1) for layer in range(first) for side in SIDES}  # read before the site
        for dst, layer, h in sorted(readers | before):
            sql = f"SELECT {COLUMNS} FROM edges_into('{dst}', {layer}, {h}) WHERE {source}"
            into = _rows(stored, sql, [DST, sae.site_layer, i])
            got = {k: v for k, v in out.items() if (k[3], k[4], k[6]) == (dst, layer, h)}
            assert bool(into) == ((dst, layer, h) in readers), (sae.name, dst, layer, h)
            _close(got, into, (sae.name, dst, layer, h), 1e-9)
        for layer in range(first, n_layers):
            for p in stored.prompts:
                extra = latent_writes(model, sae, p.ids)
                for side in SIDES:
                    if side == "value":
                        every = expected_value_in_edges(model, p.ids, p.target_id, p.distractor_id, layer, 1, extra)
                    elif len(p.ids) == 1:
                        continue
                    else:
                        every = expected_qk_in_edges(model, p.ids, p.target_id, p.distractor_id, layer, 1, side, extra)
                    want = {k: v for k, v in every.items() if k[2:6] == (DST, sae.site_layer, None, i)}
                    got = {
                        (k[1], k[2], *k[7:12]): v
                        for k, v in out.items()
                        if k[0] == p.prompt_id and (k[3], k[4], k[6]) == (f"attn_{side}", layer, 1)
                    }
                    _close(got, want, (sae.name, side, layer, p.prompt_id), REL)
                    checked += len(want)
    assert checked


def test_the_command_takes_an_sae_latent_as_the_upstream_node(stored: Stored) -> None:  # noqa: F811
    sae = stored.saes[0]  # DST::LATENT for the SAE on the embedding (the first set's first)
    node = f"{DST}:{'' if sae.site_layer is None else sae.site_layer}:{stored.latents[sae.name]}"
    prompt_id = stored.wh.sql(
        "SELECT min(prompt_id) FROM facts WHERE dst = ? AND layer IS NOT DISTINCT FROM ? AND node_index = ?",
        [DST, sae.site_layer, stored.latents[sae.name]],
        output="rows",
    )[0][0]  # one where the latent fires
    args = ["edges", "--db", str(stored.path), "--from", node, "--prompt-id", str(prompt_id), "-k", "3"]
    result = CliRunner().invoke(main, [*args, "--by", "activation", "--format", "csv"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 4 and all(DST in line for line in lines[1:]), result.output
