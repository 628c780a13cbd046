"""Spliced SAEs: latents equal each format's own encoder on the stored site, splicing changes no stored
value, latent and error gradients equal autograd through a reference splice, the latents' and errors'
views equal an oracle, and direct effects still add up with latents + error in place of their site.

One random-weight transformers GPT-2 and two sets of SAEs, each in one ingest: seven of the field's formats,
covering SAELens, sparsify and Gemma Scope, the four architectures, old and new SAELens configs and every
site kind (the embedding, residual after a block, MLP activation, MLP output, attention output, attention
z); and four of the reference system's own (OpenAI sparse_autoencoder state dicts: ReLU, tied ReLU, and
TopK, which layer-normalises its input, on the residual and on the MLP activation; given as a file or as a
folder of per-layer files, with the hook as a TransformerLens name or a reference-system location name).
The oracle (tests/sae_oracle.py) shares no code with actwh.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ingest.prompts import PromptInput
from ingest.worker import IngestOptions, ingest
from queries import Warehouse
from tests.hf_checkpoints import Checkpoint, gpt2_checkpoint
from tests.sae_oracle import (
    OracleSAE,
    SplicedGrads,
    input_stats,
    random_sae,
    reference_splice,
    site_values,
    write,
    write_openai,
)
from warehouse.registry import LOCATIONS

pytest.importorskip("transformers")

PROMPTS = [
    PromptInput("The capital of France is", " Paris", " London"),
    PromptInput("When Mary and John went to the store, John gave a drink to", " Mary", " John"),
    PromptInput("A", " Rome", " Berlin"),
    PromptInput("one two three four five six seven eight nine ten eleven twelve, then", " Paris", " Rome"),
]
LOCATIONS_STORED = [name for name, loc in LOCATIONS.items() if not loc.only_with]
# name, format, architecture, hook name, HF site kind, layer, registry location, its layer, d_sae, k, rescale
SAES = [
    ("res1", "saelens", "standard", "blocks.1.hook_resid_post", "resid_post", 1, "resid.post_mlp", 1, 128, None, False),
    ("pre0", "saelens", "gated", "blocks.0.hook_resid_pre", "resid_pre0", 0, "resid.post_emb", None, 128, None, False),
    ("mlp0", "saelens", "jumprelu", "blocks.0.mlp.hook_post", "mlp_post", 0, "mlp.post_act", 0, 256, None, False),
    ("z1", "saelens", "topk", "blocks.1.attn.hook_z", "z", 1, "attn.v_out", 1, 128, 8, True),
    ("h.1.mlp", "sparsify", "topk", "h.1.mlp", "mlp_out", 1, "resid.delta_mlp", 1, 128, 8, False),
    ("res0", "gemma_scope", "jumprelu", "blocks.0.hook_resid_post", "resid_post", 0, "resid.post_mlp", 0, 128, None,
     False),
    ("attn0", "saelens_old", "topk", "blocks.0.hook_attn_out", "attn_out", 0, "resid.delta_attn", 0, 96, 6, False),
]  # fmt: skip
# sparsify names the folder after the hook point; Gemma Scope's site comes from the release's folders
FOLDERS = {"sparsify": "sparsify/{name}", "gemma_scope": "gemma-scope-2b-pt-res/layer_0/width_16k/average_l0_8"}
# The reference system's format: the hook is what follows @ in the --sae value (a location name takes the
# layer from the file's name); TopK ones layer-normalise their input.
OPENAI_SAES = [
    ("oa_mlp0", "openai", "standard", "mlp_post_act", "mlp_post", 0, "mlp.post_act", 0, 256, None, False),
    ("oa_attn1", "openai", "standard", "RESID_DELTA_ATTN", "attn_out", 1, "resid.delta_attn", 1, 96, None, False),
    ("oa_res1", "openai", "topk", "blocks.1.hook_resid_post", "resid_post", 1, "resid.post_mlp", 1, 128, 8, False),
    ("oa_mlp1", "openai", "topk", "blocks.1.mlp.hook_post", "mlp_post", 1, "mlp.post_act", 1, 256, 8, False),
]  # fmt: skip
OPENAI_FILES = {
    "oa_mlp0": "mlp_post_act/autoencoders/0.pt",
    "oa_attn1": "resid_delta_attn/autoencoders/1.pt",
    "oa_res1": "resid_post_mlp_v5_32k/autoencoders/1.pt",
    "oa_mlp1": "topk_mlp.pt",
    "oa_mid0": "resid_post_attn/autoencoders/0.pt",  # tests/test_sae_capped.py
    "oa_res0": "resid_post_mlp/autoencoders/0.pt",  # tests/test_sae_edges.py
}
GIVEN_AS_FOLDER = {"oa_res1"}  # --sae FOLDER@HOOK: actwh picks the layer's file, beside a decoy 0.pt
TIED = {"oa_attn1"}
SAE_SETS = {"field": SAES, "reference": OPENAI_SAES}


@dataclass
class Prompt:
    prompt_id: int
    ids: list[int]
    target_id: int
    distractor_id: int


@dataclass
class Stored:
    checkpoint: Checkpoint
    wh: Warehouse
    saes: list[OracleSAE]
    plain: list[Prompt]  # the prompts ingested without SAEs
    spliced: list[Prompt]  # ... and with every SAE spliced in
    splices: dict[tuple[str, int], SplicedGrads] = field(default_factory=dict)

    def reference(self, sae: OracleSAE, prompt: Prompt) -> SplicedGrads:
        """reference_splice of this SAE on this prompt (computed once)."""
        key = (sae.name, prompt.prompt_id)
        if key not in self.splices:
            model = self.checkpoint.model
            self.splices[key] = reference_splice(model, sae, prompt.ids, prompt.target_id, prompt.distractor_id)
        return self.splices[key]


def _prompts(wh: Warehouse, run_id: int) -> list[Prompt]:
    rows = wh.sql(
        "SELECT prompt_id, target_id, distractor_id FROM prompts WHERE run_id = ? ORDER BY prompt_id",
        [run_id],
        output="rows",
    )
    out = []
    for prompt_id, target_id, distractor_id in rows:
        ids = wh.sql("SELECT token_id FROM tokens WHERE prompt_id = ? ORDER BY token", [prompt_id], output="rows")
        out.append(Prompt(prompt_id, [i for (i,) in ids], target_id, distractor_id))
    return out


def _write(sae: OracleSAE, folder: Path) -> None:
    if sae.fmt != "openai":
        write(sae, folder / FOLDERS.get(sae.fmt, "{name}").format(name=sae.name))
        return
    file = folder / OPENAI_FILES[sae.name]
    if sae.name in GIVEN_AS_FOLDER:
        write_openai(replace(sae, w_enc=-sae.w_enc), file.parent / "0.pt", "")
    write_openai(sae, file, f"{file.parent if sae.name in GIVEN_AS_FOLDER else file}@{sae.hook_name}")


@pytest.fixture(scope="module", params=list(SAE_SETS))
def stored(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    tmp = tmp_path_factory.mktemp("sae")
    checkpoint = gpt2_checkpoint(tmp / "checkpoint")
    plain, saes, wh, run_id = ingest_with_saes(tmp, checkpoint, PROMPTS, LOCATIONS_STORED, SAE_SETS[request.param])
    with wh.session():
        yield Stored(checkpoint, wh, saes, plain, _prompts(wh, run_id))


def ingest_with_saes(
    tmp: Path, checkpoint: Checkpoint, prompts: list[PromptInput], locations: list[str], rows: list[tuple]
) -> tuple[list[Prompt], list[OracleSAE], Warehouse, int]:
    """Ingest `prompts` into tmp/wh, make one random SAE per row of SAES's layout calibrated on its site's
    values on them, write each in its format under tmp/saes and ingest the prompts again with every SAE
    spliced in: (the prompts of the first ingest, the SAEs, the warehouse, the second run's id)."""
    path = tmp / "wh"
    options = IngestOptions(model=str(checkpoint.path), locations=locations, progress=False)
    plain_run = ingest(path, prompts, options).run_id
    with Warehouse(path).session() as wh:
        plain = _prompts(wh, plain_run)
    saes = []
    for seed, row in enumerate(rows):
        name, fmt, arch, hook, kind, layer, location, site_layer, d_sae, k, rescale = row
        probe = OracleSAE(name, fmt, arch, hook, kind, layer, location, site_layer, *(torch.zeros(0),) * 4)
        seen = torch.cat([site_values(checkpoint.model, probe, p.ids) for p in plain])
        normalize = fmt == "openai" and arch == "topk"
        sae = random_sae(*row[:8], seen, d_sae, seed, k, rescale, normalize, name in TIED)
        saes.append(sae)
        _write(sae, tmp / "saes")
    options.saes = [s.spec for s in saes]
    report = ingest(path, prompts, options)
    assert report.stored == len(prompts) and not report.skipped, report
    return plain, saes, Warehouse(path), report.run_id


def _dense(
    wh: Warehouse, dst: str, layer: int | None, prompt_id: int, width: int, n_tokens: int, column: str
) -> np.ndarray:
    """A stored location's values [tokens, width] for one prompt (zero where no row is stored); heads are
    flattened head-major into the width, as hook_z SAEs read them."""
    out = np.zeros((n_tokens, width))
    rows = wh.sql(
        f"SELECT token, coalesce(head, 0), node_index, {column} FROM facts WHERE dst = ? AND prompt_id = ?"
        " AND layer IS NOT DISTINCT FROM ?",
        [dst, prompt_id, layer],
        output="rows",
    )
    per_head = width // 4 if dst in ("attn_weighted_sum_of_values", "online_attention_autoencoder_error") else 0
    for token, head, node, value in rows:
        out[token, head * per_head + node] = value
    return out


def _site(stored: Stored, sae: OracleSAE, prompt: Prompt, column: str = "forward") -> np.ndarray:
    return _dense(stored.wh, LOCATIONS[sae.location].dst, sae.site_layer, prompt.prompt_id, sae.w_enc.shape[0],
                  len(prompt.ids), column)  # fmt: skip


def _latent_dst(sae: OracleSAE) -> str:
    kind = {
        "mlp.post_act": "mlp_",
        "resid.delta_mlp": "mlp_",
        "resid.delta_attn": "attention_",
        "attn.v_out": "attention_",
    }
    return f"online_{kind.get(sae.location, '')}autoencoder_latent"


def _latents(stored: Stored, sae: OracleSAE, prompt: Prompt, column: str = "forward") -> np.ndarray:
    return _dense(
        stored.wh, _latent_dst(sae), sae.site_layer, prompt.prompt_id, sae.w_enc.shape[1], len(prompt.ids), column
    )


def _close(got: np.ndarray, want: np.ndarray, rel: float, what: str) -> None:
    scale = float(np.abs(want).max()) or 1.0
    worst = float(np.abs(got - want).max()) / scale
    assert worst <= rel, f"{what}: max |diff| {worst:.3g} x max|value| > {rel:g}"


def test_the_ingest_records_each_sae(stored: Stored) -> None:
    rows = stored.wh.sql(
        "SELECT path, format, architecture, location, layer, d_in, d_sae, k, sha256 FROM saes", output="rows"
    )
    by_path = {r[0]: r[1:] for r in rows}
    assert len(by_path) == len(stored.saes)
    for sae in stored.saes:  # the digest of the weights, then the config
        fmt = "saelens" if sae.fmt == "saelens_old" else sae.fmt
        folder = sae.directory
        files = [folder] if folder.is_file() else sorted(folder.iterdir(), key=lambda p: p.name == "cfg.json")
        digest = hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()
        want = (fmt, sae.architecture, sae.location, sae.site_layer, *sae.w_enc.shape, sae.k, digest)
        assert by_path[str(sae.directory)] == want, sae.name


def test_latents_equal_each_formats_encoder_on_the_stored_site(stored: Stored) -> None:
    """Every latent row equals the SAE (the test's own encoder, by the format's conventions) applied to the
    stored site activation; rows are stored exactly where a latent is non-zero, a few percent of them."""
    for sae in stored.saes:
        active = total = 0
        for prompt in stored.spliced:
            want = sae.encode(torch.from_numpy(_site(stored, sae, prompt))).numpy()
            got = _latents(stored, sae, prompt)
            _close(got, want, 1e-5, f"{sae.name} latents")
            assert ((got != 0) == (want != 0)).all(), f"{sae.name}: stored rows are not the non-zero latents"
            rows = stored.wh.sql(
                "SELECT count(*) FROM facts WHERE dst = ? AND prompt_id = ? AND layer IS NOT DISTINCT FROM ?",
                [_latent_dst(sae), prompt.prompt_id, sae.site_layer],
                output="rows",
            )[0][0]
            assert rows == (want != 0).sum(), f"{sae.name}: {rows} rows for {(want != 0).sum()} non-zero latents"
            active, total = active + int((want != 0).sum()), total + want.size
            if sae.normalize:  # the input's stats, which the views scale the latents' writes by
                mean, std = input_stats(torch.from_numpy(_site(stored, sae, prompt)))
                for dst, value in zip(_input_stat_dsts(sae), (mean, std), strict=True):
                    got = _dense(stored.wh, dst, sae.site_layer, prompt.prompt_id, 1, len(prompt.ids), "forward")
                    _close(got, value.numpy(), 1e-5, f"{sae.name} {dst}")
        assert 0.005 < active / total < 0.2, f"{sae.name}: {active / total:.1%} active, not a realistic sparsity"


def _input_stat_dsts(sae: OracleSAE) -> list[str]:
    return [_latent_dst(sae).replace("_latent", f"_input_{stat}") for stat in ("mean", "std")]


def test_splicing_changes_no_stored_value(stored: Stored) -> None:
    """Every model location, both passes, the logits and the objective: the same with the SAEs spliced in
    as without them (1e-6 of each dst's largest value)."""
    pairs = list(zip(stored.plain, stored.spliced, strict=True))
    assert all(a.ids == b.ids for a, b in pairs)
    mapping = ", ".join(f"({a.prompt_id}, {b.prompt_id})" for a, b in pairs)
    rows = stored.wh.sql(
        f"""
        WITH m(plain, spliced) AS (VALUES {mapping})
        SELECT a.dst, count(*), count(b.dst), max(abs(a.forward - b.forward)) / max(abs(a.forward)),
               coalesce(max(abs(a.backward - b.backward)) / nullif(max(abs(a.backward)), 0), 0)
        FROM facts a JOIN m ON m.plain = a.prompt_id
        LEFT JOIN facts b ON b.prompt_id = m.spliced AND b.dst = a.dst AND b.token = a.token
             AND b.token2 IS NOT DISTINCT FROM a.token2 AND b.layer IS NOT DISTINCT FROM a.layer
             AND b.head IS NOT DISTINCT FROM a.head AND b.node_index = a.node_index
        GROUP BY a.dst""",
        output="rows",
    )
    assert {r[0] for r in rows} >= {LOCATIONS[n].dst for n in LOCATIONS_STORED}
    for dst, n, matched, forward, backward in rows:
        assert n == matched, f"{dst}: {n - matched} rows missing with the SAEs spliced in"
        assert forward <= 1e-6 and backward <= 1e-6, f"{dst}: forward off by {forward:.3g}, backward {backward:.3g}"
    objectives = stored.wh.sql("SELECT prompt_id, objective FROM prompts", output="rows")
    by_id = dict(objectives)
    for a, b in pairs:
        assert abs(by_id[a.prompt_id] - by_id[b.prompt_id]) <= 1e-6 * abs(by_id[a.prompt_id])


def test_latent_and_error_gradients_equal_autograd_through_a_reference_splice(stored: Stored) -> None:
    """The stored backward of each latent (where stored) and of the error equal autograd through the
    reference splice reconstruction + detached error in transformers, one SAE at a time."""
    for sae in stored.saes:
        for prompt in stored.spliced:
            ref = stored.reference(sae, prompt)
            latents = _latents(stored, sae, prompt)
            _close(latents, ref.latents.numpy(), 1e-4, f"{sae.name} latents through transformers")
            grads = _latents(stored, sae, prompt, "backward")
            want = np.where(latents != 0, ref.latent_grads.numpy(), 0.0)
            _close(grads, want, 1e-4, f"{sae.name} latent gradients")
            error_dst = _error_dst(sae)
            width = sae.w_enc.shape[0]
            error = _dense(stored.wh, error_dst, sae.site_layer, prompt.prompt_id, width, len(prompt.ids), "forward")
            _close(error, ref.error.numpy(), 1e-4, f"{sae.name} error")
            error_grads = _dense(
                stored.wh, error_dst, sae.site_layer, prompt.prompt_id, width, len(prompt.ids), "backward"
            )
            _close(error_grads, ref.error_grads.numpy(), 1e-4, f"{sae.name} error gradients")


def _error_dst(sae: OracleSAE) -> str:
    return {
        "resid.post_mlp": "online_autoencoder_error",
        "resid.post_attn": "online_autoencoder_error",
        "resid.post_emb": "online_autoencoder_error",
        "mlp.post_act": "online_mlp_autoencoder_error",
        "resid.delta_mlp": "online_residual_mlp_autoencoder_error",
        "resid.delta_attn": "online_residual_attention_autoencoder_error",
        "attn.v_out": "online_attention_autoencoder_error",
    }[sae.location]


# -- views ------------------------------------------------------------------------------------------------


def _write_matrix(stored: Stored, sae: OracleSAE) -> torch.Tensor | None:
    """[d_in, d_model]: how a site value writes to the residual stream (None: it is in the residual)."""
    block = stored.checkpoint.model.transformer.h[sae.layer]
    if sae.location == "mlp.post_act":
        return block.mlp.c_proj.weight.detach().double()
    if sae.location == "attn.v_out":
        return block.attn.c_proj.weight.detach().double()
    return None


def _writes(stored: Stored, sae: OracleSAE, vectors: torch.Tensor) -> torch.Tensor:
    matrix = _write_matrix(stored, sae)
    return vectors if matrix is None else vectors @ matrix


def _final_grad(stored: Stored, prompt: Prompt, target: int, distractor: int) -> torch.Tensor:
    """g = P(gain_f * (W_U[:, t] - W_U[:, d])) / s_f at the last token, from transformers."""
    model = stored.checkpoint.model
    kept: list[torch.Tensor] = []
    handle = model.transformer.ln_f.register_forward_pre_hook(lambda m, args: kept.append(args[0].detach()))
    try:
        with torch.no_grad():
            model(torch.tensor([prompt.ids]))
    finally:
        handle.remove()
    x = kept[0][0, -1].double()
    ln_f = model.transformer.ln_f
    scale = ((x - x.mean()).pow(2).mean() + ln_f.eps).sqrt()
    w_u = model.lm_head.weight.detach().double()
    u = ln_f.weight.detach().double() * (w_u[target] - w_u[distractor])
    return (u - u.mean()) / scale


def _view(stored: Stored, view: str, prompt: Prompt, layer: int | None) -> dict[tuple[int, int], float]:
    rows = stored.wh.sql(
        f"SELECT token, node_index, value FROM {view} WHERE prompt_id = ? AND layer IS NOT DISTINCT FROM ?",
        [prompt.prompt_id, layer],
        output="rows",
    )
    return {(t, i): v for t, i, v in rows}


def _assert_rows(got: dict, want: dict, what: str, rel: float = 1e-4) -> None:
    assert set(got) == set(want), f"{what}: rows {sorted(set(got) ^ set(want))[:4]} differ"
    if want:
        _close(np.array([got[k] for k in want]), np.array(list(want.values())), rel, what)


def _kind(sae: OracleSAE) -> str:
    return _latent_dst(sae).removesuffix("_latent")


def test_latent_views_equal_the_oracle(stored: Stored) -> None:
    """write norm f ||w||, act x grad f df and the direct effect f (w . g) of every latent, w the latent's
    write to the residual (decoder row, through W_out or W_O for mlp.post_act or attn.v_out)."""
    for sae in stored.saes:
        w = _writes(stored, sae, sae.decoder_rows())
        for prompt in stored.spliced:
            ref = stored.reference(sae, prompt)
            f = ref.latents.double()
            active = [tuple(map(int, ti)) for ti in torch.nonzero(f)]
            last = len(prompt.ids) - 1
            g = _final_grad(stored, prompt, prompt.target_id, prompt.distractor_id)
            s = ref.write_scale  # the input's std per token for a layer-normalising SAE, else 1
            expected = {
                "write_norm": {(t, i): float(f[t, i] * s[t] * w[i].norm()) for t, i in active},
                "act_times_grad": {(t, i): float(f[t, i] * ref.latent_grads[t, i]) for t, i in active},
                "write_to_final_residual_grad": {
                    (t, i): float(f[t, i] * s[t] * (w[i] @ g)) for t, i in active if t == last
                },
            }
            for scalar, want in expected.items():
                view = f"{_kind(sae)}_{scalar}"
                _assert_rows(_view(stored, view, prompt, sae.site_layer), want, f"{sae.name} {view}")


def test_error_views_equal_the_oracle(stored: Stored) -> None:
    for sae in stored.saes:
        for prompt in stored.spliced:
            ref = stored.reference(sae, prompt)
            e = ref.error.double()
            writes = _writes(stored, sae, e)
            g = _final_grad(stored, prompt, prompt.target_id, prompt.distractor_id)
            tokens = range(len(prompt.ids))
            expected = {
                "act_times_grad": {(t, 0): float(e[t] @ ref.error_grads[t].double()) for t in tokens},
                "write_norm": {(t, 0): float(writes[t].norm()) for t in tokens},
                "write_to_final_residual_grad": {(tokens[-1], 0): float(writes[-1] @ g)},
            }
            for scalar, want in expected.items():
                view = f"{_error_dst(sae)}_{scalar}"
                _assert_rows(_view(stored, view, prompt, sae.site_layer), want, f"{sae.name} {view}")


# the direct effect of each SAE's site, from the views of the model's own nodes: (view, summed over nodes)
_SITE_EFFECTS = {
    "resid.post_emb": "resid_post_embedding_proj_to_final_residual_grad",
    "resid.post_attn": "resid_post_attn_proj_to_final_residual_grad",
    "resid.post_mlp": "resid_post_mlp_proj_to_final_residual_grad",
    "mlp.post_act": "mlp_write_to_final_residual_grad",
    "resid.delta_mlp": "mlp_layer_write_to_final_residual_grad",
    "resid.delta_attn": "attn_layer_write_to_final_residual_grad",
    "attn.v_out": "unflattened_attn_write_to_final_residual_grad",
}


def test_direct_effects_add_up_with_latents_and_error_in_place_of_the_site(stored: Stored) -> None:
    """Per prompt and SAE: sum of its latents' direct effects + its decoder bias's + its error's = the
    direct effect of the site it reads, as the model's own nodes' views give it."""
    for sae in stored.saes:
        assert_identity_closes(stored.wh, sae, [p.prompt_id for p in stored.spliced])


def assert_identity_closes(wh: Warehouse, sae: OracleSAE, prompt_ids: list[int]) -> dict[int, float]:
    """The direct-effect identity for one SAE on each prompt (1e-4 of its terms); returns the site's
    direct effect per prompt as the model's own nodes' views give it."""
    kind, layer = _kind(sae), sae.site_layer
    prefix = kind.removeprefix("online_")
    parts = {}
    for view in (f"{kind}_write_to_final_residual_grad", f"{_error_dst(sae)}_write_to_final_residual_grad"):
        parts[view] = dict(
            wh.sql(
                f"SELECT prompt_id, sum(value) FROM {view} WHERE layer IS NOT DISTINCT FROM ? GROUP BY prompt_id",
                [layer],
                output="rows",
            )
        )
    bias = dict(
        wh.sql(
            """
            SELECT f.prompt_id, sum(w.value * f.value / f.final_scale)
            FROM pair_join_factors(NULL, NULL, 'residual') f JOIN prompts p USING (prompt_id)
            JOIN weights w ON w.model_id = p.model_id AND w.location = ? AND w.layer IS NOT DISTINCT FROM ?
                 AND w.row_index = f.node_index
            GROUP BY f.prompt_id""",
            [f"{prefix}.bias_to_residual", layer],
            output="rows",
        )
    )
    if sae.normalize:
        bias = _un_normalised(wh, sae, bias)
    site = dict(
        wh.sql(
            f"SELECT prompt_id, sum(value) FROM {_SITE_EFFECTS[sae.location]} WHERE layer IS NOT DISTINCT FROM ?"
            " GROUP BY prompt_id",
            [layer],
            output="rows",
        )
    )
    for pid in prompt_ids:
        terms = [parts[v].get(pid, 0.0) for v in parts] + [bias[pid]]
        assert all(t != 0 for t in terms), f"{sae.name}: a term is missing: {terms}"
        closed = sum(terms) - site[pid]
        assert abs(closed) <= 1e-4 * (sum(abs(t) for t in terms) + abs(site[pid])), f"{sae.name}: off by {closed:.3g}"
    return {pid: site[pid] for pid in prompt_ids}


def _un_normalised(wh: Warehouse, sae: OracleSAE, bias: dict[int, float]) -> dict[int, float]:
    """A layer-normalising SAE's bias term: its reconstruction of zero latents at the last token T is
    s[T] b_dec + m[T] (1, ..., 1), s and m the input's stored std and mean; the ones vector's direct effect
    from the factors of the site's kind (the residual's, or W_out's rows for mlp.post_act)."""
    factor_kind = {"mlp.post_act": "mlp", "attn.v_out": "attn"}.get(sae.location, "residual")
    ones = dict(
        wh.sql(
            "SELECT prompt_id, sum(value / final_scale) FROM pair_join_factors(NULL, NULL, ?)"
            " WHERE ? = 'residual' OR layer = ? GROUP BY prompt_id",
            [factor_kind, factor_kind, sae.site_layer],
            output="rows",
        )
    )
    mean, std = (
        dict(
            wh.sql(
                "SELECT a.prompt_id, a.value FROM activations a JOIN prompts p USING (prompt_id)"
                " WHERE a.dst = ? AND a.layer IS NOT DISTINCT FROM ? AND a.token = p.n_tokens - 1",
                [dst, sae.site_layer],
                output="rows",
            )
        )
        for dst in _input_stat_dsts(sae)
    )
    return {pid: std[pid] * value + mean[pid] * ones[pid] for pid, value in bias.items() if pid in std}


def test_latent_direct_effects_for_a_pair_given_at_query_time(stored: Stored) -> None:
    """autoencoder_direct_effects_for(t, d) answers another pair than the ingested one, from the weights."""
    prompt = stored.spliced[0]
    target, distractor = stored.spliced[2].distractor_id, stored.spliced[1].distractor_id  # stored columns
    g = _final_grad(stored, prompt, target, distractor)
    last = len(prompt.ids) - 1
    rows = stored.wh.sql(
        "SELECT dst, layer, token, node_index, value FROM autoencoder_direct_effects_for(?, ?) WHERE prompt_id = ?",
        [target, distractor, prompt.prompt_id],
        output="rows",
    )
    for sae in stored.saes:
        f = torch.from_numpy(_latents(stored, sae, prompt)).double()
        w = _writes(stored, sae, sae.decoder_rows())
        s = stored.reference(sae, prompt).write_scale[last]
        want = {(last, int(i)): float(f[last, i] * s * (w[i] @ g)) for i in torch.nonzero(f[last]).flatten()}
        dst = f"{_kind(sae)}_write_to_final_residual_grad"
        got = {(t, i): v for d, layer, t, i, v in rows if d == dst and layer == sae.site_layer}
        _assert_rows(got, want, f"{sae.name} for another pair")


def test_top_examples_and_node_stats_read_latents(stored: Stored) -> None:
    """The node commands take latent dsts like any other."""
    from click.testing import CliRunner

    from cli import main

    prompt = stored.spliced[0]
    node = int(np.nonzero(_latents(stored, stored.saes[0], prompt)[-1])[0][0])
    db_path = str(stored.wh.path)
    dst = "online_autoencoder_act_times_grad"
    commands = [
        ["top", "--prompt-id", str(prompt.prompt_id), "--by", dst, "-k", "3"],
        ["examples", "--dst", dst, "--layer", "1", "--node", str(node), "-k", "2"],
        ["node-stats", "--dst", dst, "--layer", "1", "--node", str(node)],
    ]
    for args in commands:
        result = CliRunner().invoke(main, [args[0], "--db", db_path, "--format", "csv", *args[1:]])
        assert result.exit_code == 0, (args, result.output)
        assert len(result.output.splitlines()) >= 2, (args, result.output)
