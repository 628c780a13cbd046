"""Spliced SAEs: latents equal each format's own encoder on the stored site, splicing changes no stored
value, latent and error gradients equal autograd through a reference splice, the latents' and errors'
views equal an oracle, and direct effects still add up with latents + error in place of their site.

One random-weight transformers GPT-2 and seven SAEs in one ingest, covering the three formats, the four
architectures, old and new SAELens configs and every site kind (the embedding, residual after a block,
MLP activation, MLP output, attention output, attention z). The oracle (tests/sae_oracle.py) shares no
code with actwh.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from ingest.prompts import PromptInput
from ingest.worker import IngestOptions, ingest
from queries import Warehouse
from tests.hf_checkpoints import Checkpoint, gpt2_checkpoint
from tests.sae_oracle import OracleSAE, random_sae, reference_splice, site_values, write
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


def _prompts(wh: Warehouse, run_id: int) -> list[Prompt]:
    rows = wh.sql(
        "SELECT prompt_id, target_id, distractor_id FROM prompts WHERE run_id = ? ORDER BY prompt_id",
        [run_id],
        output="rows",
    )
    out = []
    for prompt_id, target_id, distractor_id in rows:
        ids = wh.sql("SELECT token_id FROM tokens WHERE prompt_id = ? ORDER BY position", [prompt_id], output="rows")
        out.append(Prompt(prompt_id, [i for (i,) in ids], target_id, distractor_id))
    return out


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    tmp = tmp_path_factory.mktemp("sae")
    checkpoint = gpt2_checkpoint(tmp / "checkpoint")
    path = tmp / "wh"
    options = IngestOptions(model=str(checkpoint.path), locations=LOCATIONS_STORED, progress=False)
    plain_run = ingest(path, PROMPTS, options).run_id
    with Warehouse(path).session() as wh:
        plain = _prompts(wh, plain_run)
    saes = []
    for seed, (name, fmt, arch, hook, kind, layer, location, site_layer, d_sae, k, rescale) in enumerate(SAES):
        probe = OracleSAE(name, fmt, arch, hook, kind, layer, location, site_layer, *(torch.zeros(0),) * 4)
        seen = torch.cat([site_values(checkpoint.model, probe, p.ids) for p in plain])
        sae = random_sae(name, fmt, arch, hook, kind, layer, location, site_layer, seen, d_sae, seed, k, rescale)
        saes.append(sae)
        write(sae, tmp / "saes" / FOLDERS.get(fmt, "{name}").format(name=name))
    options.saes = [str(s.directory) for s in saes]
    report = ingest(path, PROMPTS, options)
    assert report.stored == len(PROMPTS) and not report.skipped, report
    wh = Warehouse(path)
    with wh.session():
        yield Stored(checkpoint, wh, saes, plain, _prompts(wh, report.run_id))


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
    for sae in stored.saes:
        fmt = "saelens" if sae.fmt == "saelens_old" else sae.fmt
        weights = next(p for p in sorted(sae.directory.iterdir()) if p.name != "cfg.json")
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
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
            active, total = active + int((want != 0).sum()), total + want.size
        assert 0.005 < active / total < 0.2, f"{sae.name}: {active / total:.1%} active, not a realistic sparsity"


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
            ref = reference_splice(stored.checkpoint.model, sae, prompt.ids, prompt.target_id, prompt.distractor_id)
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
        "resid.post_emb": "online_autoencoder_error",
        "mlp.post_act": "online_mlp_autoencoder_error",
        "resid.delta_mlp": "online_residual_mlp_autoencoder_error",
        "resid.delta_attn": "online_residual_attention_autoencoder_error",
        "attn.v_out": "online_attention_autoencoder_error",
    }[sae.location]
