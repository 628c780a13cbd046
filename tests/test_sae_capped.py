"""SAEs spliced into a model whose final logits are soft-capped (Gemma 2): the latents equal each format's
encoder on the site as transformers computes it, their direct effects equal the oracle's f s (w . g) with
g the final-residual gradient through the cap (the slopes 1 - tanh(z / cap)^2 of the target's and the
distractor's uncapped logits), for the ingested pair and for another given at query time, and the
direct-effect identity closes with latents + bias + error in place of the site, whose direct effect
equals the oracle's.

The random-weight Gemma 2 of tests/hf_checkpoints.py (final logits capped at 15, norms after attention
and after the MLP) with three SAEs on residual-stream sites, the only sites spliced in a model that norms
block outputs (tests/test_sae_bad_input.py): a SAELens jumprelu on the embedding (blocks.0.hook_resid_pre),
an OpenAI TopK (layer-normalised input) between the blocks of layer 0 (0.pt@resid_post_attn) and a
sparsify topk on the final residual (layers.1). The oracle (tests/oracle_scalars.py, tests/sae_oracle.py)
shares no code with actwh.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from ingest.prompts import PromptInput
from queries import Warehouse
from tests import test_sae_capture as capture
from tests.hf_checkpoints import Checkpoint, gemma2_checkpoint
from tests.oracle_scalars import expected_scalars
from tests.sae_oracle import OracleSAE, input_stats, site_values
from tests.test_sae_capture import (
    _SITE_EFFECTS,
    Prompt,
    _assert_rows,
    _close,
    _dense,
    _error_dst,
    _input_stat_dsts,
    _kind,
    _latent_dst,
    _prompts,
    assert_identity_closes,
    ingest_with_saes,
)
from warehouse import registry

pytest.importorskip("transformers")

PROMPTS = [*capture.PROMPTS, PromptInput("Cities: Paris, London and", " Rome", " Berlin")]
LOCATIONS = ["resid.post_emb", "resid.post_attn", "resid.post_mlp", "resid.ln_f.scale:forward", "logits"]
# as tests/test_sae_capture.py's SAES: name, format, architecture, hook (after @ for the OpenAI file, whose
# name gives the layer), HF site kind, layer, registry location, its layer, d_sae, k, rescale
SAES = [
    ("pre0", "saelens", "jumprelu", "blocks.0.hook_resid_pre", "gemma_resid_pre0", 0, "resid.post_emb", None, 128,
     None, False),
    ("oa_mid0", "openai", "topk", "resid_post_attn", "gemma_resid_mid", 0, "resid.post_attn", 0, 128, 8, False),
    ("layers.1", "sparsify", "topk", "layers.1", "gemma_resid_post", 1, "resid.post_mlp", 1, 128, 8, False),
]  # fmt: skip
REL = 1e-4  # of the largest |value| per view and prompt: float32 storage against a float64 oracle


@dataclass
class Capped:
    checkpoint: Checkpoint
    wh: Warehouse
    saes: list[OracleSAE]
    prompts: list[Prompt]  # ingested with every SAE spliced in
    oracles: dict[tuple[int, int, int], dict] = field(default_factory=dict)

    def oracle(self, prompt: Prompt, target: int, distractor: int) -> dict:
        """The oracle's scalars of one prompt for the pair (computed once)."""
        key = (prompt.prompt_id, target, distractor)
        if key not in self.oracles:
            self.oracles[key] = expected_scalars(self.checkpoint.model, prompt.ids, target, distractor, False)
        return self.oracles[key]

    def final_grad(self, prompt: Prompt, target: int, distractor: int) -> torch.Tensor:
        """g [d_model] at the last token: the objective's gradient with respect to the final residual, the
        final norm's scale held, through the soft cap."""
        rows = self.oracle(prompt, target, distractor)["final_residual_grad"]
        values = [value for _, value in sorted((key[4], value) for key, value in rows.items())]
        return torch.tensor(values, dtype=torch.float64)

    def site(self, sae: OracleSAE, prompt: Prompt, column: str = "forward") -> np.ndarray:
        """The stored site value [tokens, d_in] (or its gradient)."""
        dst = registry.LOCATIONS[sae.location].dst
        return _dense(self.wh, dst, sae.site_layer, prompt.prompt_id, sae.w_enc.shape[0], len(prompt.ids), column)

    def latents(self, sae: OracleSAE, prompt: Prompt, column: str = "forward") -> np.ndarray:
        width, n = sae.w_enc.shape[1], len(prompt.ids)
        return _dense(self.wh, _latent_dst(sae), sae.site_layer, prompt.prompt_id, width, n, column)

    def write_scale(self, sae: OracleSAE, prompt: Prompt) -> torch.Tensor:
        """[tokens]: the input's std for a layer-normalising SAE (from transformers' site), else ones."""
        x = site_values(self.checkpoint.model, sae, prompt.ids).double()
        return input_stats(x)[1][:, 0] if sae.normalize else torch.ones(len(prompt.ids), dtype=torch.float64)


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Capped]:
    tmp = tmp_path_factory.mktemp("capped")
    checkpoint = gemma2_checkpoint(tmp / "checkpoint")
    _, saes, wh, run_id = ingest_with_saes(tmp, checkpoint, PROMPTS, LOCATIONS, SAES)
    with wh.session():
        spliced = _prompts(wh, run_id)
        # the cap bends the objective's logits (slope 1 is no cap), or the test would not exercise it
        slopes = wh.sql(
            "SELECT min(least(target_slope, distractor_slope)) FROM prompt_objectives(NULL, NULL)", output="rows"
        )
        assert slopes[0][0] < 0.5, slopes
        yield Capped(checkpoint, wh, saes, spliced)


def test_latents_equal_each_formats_encoder_on_the_site(capped: Capped) -> None:
    """The stored site equals transformers' (1e-5), and the latent rows are exactly the non-zero latents of
    the format's own encoder on it (1e-5)."""
    for sae in capped.saes:
        for prompt in capped.prompts:
            site = capped.site(sae, prompt)
            transformers_site = site_values(capped.checkpoint.model, sae, prompt.ids).double().numpy()
            _close(site, transformers_site, 1e-5, f"{sae.name} site")
            want = sae.encode(torch.from_numpy(site)).numpy()
            got = capped.latents(sae, prompt)
            _close(got, want, 1e-5, f"{sae.name} latents")
            assert ((got != 0) == (want != 0)).all(), f"{sae.name}: stored rows are not the non-zero latents"
            assert (want != 0).any(axis=1).all(), f"{sae.name}: a token without an active latent"
            if sae.normalize:
                for dst, value in zip(_input_stat_dsts(sae), input_stats(torch.from_numpy(site)), strict=True):
                    stored = _dense(capped.wh, dst, sae.site_layer, prompt.prompt_id, 1, len(prompt.ids), "forward")
                    _close(stored, value.numpy(), 1e-5, f"{sae.name} {dst}")


def _expected_effects(capped: Capped, sae: OracleSAE, prompt: Prompt, g: torch.Tensor) -> dict:
    """f[T,i] s[T] (D_i . g) for the latents active at the last token T (stored latents, oracle's g)."""
    last = len(prompt.ids) - 1
    f = torch.from_numpy(capped.latents(sae, prompt)).double()
    s = capped.write_scale(sae, prompt)[last]
    rows = sae.decoder_rows()
    return {(last, int(i)): float(f[last, i] * s * (rows[i] @ g)) for i in torch.nonzero(f[last]).flatten()}


def test_latent_direct_effects_equal_the_oracle_through_the_cap(capped: Capped) -> None:
    """online_autoencoder_write_to_final_residual_grad for each prompt's own pair: g from transformers'
    autograd through the capped logits."""
    for sae in capped.saes:
        view = f"{_kind(sae)}_write_to_final_residual_grad"
        for prompt in capped.prompts:
            g = capped.final_grad(prompt, prompt.target_id, prompt.distractor_id)
            want = _expected_effects(capped, sae, prompt, g)
            rows = capped.wh.sql(
                f"SELECT token, node_index, value FROM {view} WHERE prompt_id = ? AND layer IS NOT DISTINCT FROM ?",
                [prompt.prompt_id, sae.site_layer],
                output="rows",
            )
            _assert_rows({(t, i): v for t, i, v in rows}, want, f"{sae.name} {view}", REL)


def test_latent_direct_effects_for_another_pair_equal_the_oracle(capped: Capped) -> None:
    """autoencoder_direct_effects_for(t, d): the pair's own slopes, from its uncapped logits."""
    target, distractor = capped.prompts[2].distractor_id, capped.prompts[1].distractor_id  # stored columns
    for prompt in capped.prompts:
        g = capped.final_grad(prompt, target, distractor)
        rows = capped.wh.sql(
            "SELECT dst, layer, token, node_index, value FROM autoencoder_direct_effects_for(?, ?) WHERE prompt_id = ?",
            [target, distractor, prompt.prompt_id],
            output="rows",
        )
        for sae in capped.saes:
            dst = f"{_kind(sae)}_write_to_final_residual_grad"
            got = {(t, i): v for d, layer, t, i, v in rows if d == dst and layer == sae.site_layer}
            _assert_rows(got, _expected_effects(capped, sae, prompt, g), f"{sae.name} for another pair", REL)


def test_direct_effects_add_up_to_the_oracles_site_effect(capped: Capped) -> None:
    """Latents + decoder bias + error = the site's direct effect from the views, which equals the oracle's
    x[T] . g[T] through the cap."""
    for sae in capped.saes:
        site = assert_identity_closes(capped.wh, sae, [p.prompt_id for p in capped.prompts])
        for prompt in capped.prompts:
            oracle = capped.oracle(prompt, prompt.target_id, prompt.distractor_id)
            rows = oracle[_SITE_EFFECTS[sae.location]]  # the oracle names it as the views do
            want = rows[(len(prompt.ids) - 1, None, sae.site_layer, None, 0)]
            assert abs(site[prompt.prompt_id] - want) <= REL * max(abs(want), 1.0), (sae.name, site, want)


def test_latent_and_error_gradients_route_the_sites_gradient(capped: Capped) -> None:
    """dL/df[t,i] = s[t] (D_i . dL/dx[t]) and dL/derror = dL/dx, dL/dx the site's stored gradient."""
    for sae in capped.saes:
        for prompt in capped.prompts:
            site_grad = torch.from_numpy(capped.site(sae, prompt, "backward"))
            latents = capped.latents(sae, prompt)
            want = capped.write_scale(sae, prompt)[:, None] * (site_grad @ sae.decoder_rows().T)
            got = capped.latents(sae, prompt, "backward")
            _close(got, np.where(latents != 0, want.numpy(), 0.0), REL, f"{sae.name} latent gradients")
            error_dst = _error_dst(sae)
            error_grad = _dense(capped.wh, error_dst, sae.site_layer, prompt.prompt_id, sae.w_enc.shape[0],
                                len(prompt.ids), "backward")  # fmt: skip
            _close(error_grad, site_grad.numpy(), 1e-6, f"{sae.name} error gradients")
