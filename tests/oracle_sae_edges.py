"""The oracle for edges into a latent of a sparse autoencoder on the residual stream, from a transformers model,
the test's own SAE (tests/sae_oracle.py, each format's conventions) and autograd.

At each token the latent is recomputed from the site's value x by the SAE's own encoder, with the std of a
layer-normalising SAE's input held at its value (as the norms' scales are); its gradient with respect to x
is dotted with every write into the residual before the site (tests/oracle_edges.py's writes, which must add
up to x: no upstream kind is left out). Attribution: the latent's gradient through the reference splice (the
logit difference, final norm's scale held) times the activation. And the other way: latents as the upstream
nodes of edges into an MLP neuron after their site. Nothing of actwh is imported.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from tests.oracle_edges import EdgeKey, reads, writes
from tests.oracle_scalars import _trace
from tests.sae_oracle import OracleSAE, input_stats, reference_splice, site_values

EPS = 1e-5  # sparse_autoencoder's LN adds it to the std


def reach(sae: OracleSAE) -> tuple[int, int]:
    """(last attention layer, last MLP layer) that write before the SAE's site; -1 for none."""
    if sae.location == "resid.post_emb":
        return -1, -1
    return sae.layer, sae.layer - (sae.location == "resid.post_attn")


def held_latent(sae: OracleSAE, x: torch.Tensor, j: int) -> torch.Tensor:
    """Latent j of x (d_in,) by the SAE's encoder, a normalised input's std held."""
    if sae.normalize:
        mean, std = input_stats(x.detach())
        x = (x - x.mean()) / (std[0] + EPS)
        sae = replace(sae, normalize=False)
    return sae.encode(x)[j]


def constant(sae: OracleSAE, j: int) -> float:
    """What latent j's pre-activation is at a zero (normalised) input, from the format's conventions: its bias
    less the decoder bias's read where the SAE subtracts it first (a gated SAE's magnitude path, a TopK SAE's
    pre-activation times the decoder row's norm where it rescales)."""
    w, b = sae.w_enc[:, j], sae.b_enc[j]
    if sae.architecture == "gated":
        w, b = w * sae.extra["r_mag"][j].exp(), sae.extra["b_mag"][j]
    read = 0.0 if sae.fmt == "gemma_scope" else float(sae.b_dec @ w)
    scale = float(sae.w_dec[j].norm()) if sae.rescale else 1.0
    return (float(b) - read) * scale


_WRITES: dict[tuple[int, tuple[int, ...]], list] = {}


def _every_write(model: nn.Module, ids: list[int]) -> list:
    """oracle_edges' writes of every layer into the residual of one prompt, computed once per prompt."""
    key = (id(model), tuple(ids))
    if key not in _WRITES:
        parts, trace = _trace(model, ids, None, None)
        last = len(parts.blocks) - 1
        _WRITES[key] = list(writes(parts, trace, len(ids), last, last))
    return _WRITES[key]


def latent_grads(model: nn.Module, sae: OracleSAE, ids: list[int], target: int, distractor: int) -> torch.Tensor:
    """dObjective/dlatents [T, d_sae] through the reference splice. GPT-2's MLP norm reads the residual between
    attention and MLP but the residual passes beside it: its gradient there is that of the attention's output
    (which joins the residual only), taken as the error's gradient of a splice at the attention's output, and
    each latent's gradient is it dotted with the latent's decoder row."""
    if sae.kind != "resid_mid":
        return reference_splice(model, sae, ids, target, distractor).latent_grads.double()
    assert not sae.normalize, "a layer-normalising SAE's decoder rows are scaled by its input's std"
    at_attn = replace(sae, kind="attn_out")
    return reference_splice(model, at_attn, ids, target, distractor).error_grads.double() @ sae.decoder_rows().T


def expected_latent_in_edges(
    model: nn.Module, sae: OracleSAE, ids: list[int], target: int, distractor: int, j: int
) -> tuple[dict[EdgeKey, tuple[float, float]], dict[int, float]]:
    """(every edge into latent j at each token where it fires, {token: the latent there})."""
    x = site_values(model, sae, ids).double()
    grad_latent = latent_grads(model, sae, ids, target, distractor)[:, j]
    last_attn, last_mlp = reach(sae)
    total = torch.zeros_like(x)
    fired: dict[int, float] = {}
    grads = {}
    for t in range(len(ids)):
        xt = x[t].clone().requires_grad_()
        f = held_latent(sae, xt, j)
        if float(f.detach()) > 0:
            fired[t] = float(f.detach())
            (grads[t],) = torch.autograd.grad(f, xt)
    out: dict[EdgeKey, tuple[float, float]] = {}
    for t, source, write in _every_write(model, ids):
        if source[1] is not None and source[1] > (last_attn if source[0].startswith("attn") else last_mlp):
            continue
        total[t] += write.double()
        if t in grads:
            activation = float(grads[t] @ write.double())
            out[(t, *source)] = (activation, float(grad_latent[t]) * activation)
    assert torch.allclose(total, x, atol=1e-4 * float(x.abs().max())), "the writes do not add up to the site"
    return out, fired


def expected_latent_out_edges(
    model: nn.Module, saes: list[OracleSAE], ids: list[int], target: int, distractor: int, layer: int, j: int
) -> dict[EdgeKey, tuple[float, float]]:
    """Every edge from a latent (where it fires) of an SAE whose site is before MLP `layer` into neuron j there,
    keyed (token, 'online_autoencoder_latent', the site's layer, None, latent, token): the neuron's gradient
    with respect to the residual it reads (its norm's scale held) dotted with the latent's write f D[i] (times
    the input's std for a layer-normalising SAE); attribution: the neuron's gradient times it."""
    _, trace, grads = reads(model, ids, target, distractor, layer, j)
    da = trace.post_act[layer].grad[0][:, j]
    out: dict[EdgeKey, tuple[float, float]] = {}
    for sae in saes:
        last_attn, last_mlp = reach(sae)
        if last_attn > layer or last_mlp >= layer:  # its site is after the residual the MLP reads
            continue
        for t, source, write in latent_writes(model, sae, ids):
            activation = float(grads[t].double() @ write)
            out[(t, *source)] = (activation, float(da[t]) * activation)
    return out


def latent_writes(model: nn.Module, sae: OracleSAE, ids: list[int]) -> list[tuple[int, tuple, torch.Tensor]]:
    """Each latent's write where it fires, (token, source key as oracle_edges.writes gives it, f D[i] (times the
    input's std for a layer-normalising SAE))."""
    x = site_values(model, sae, ids).double()
    latents = sae.encode(x)
    scale = input_stats(x)[1][:, 0] if sae.normalize else torch.ones(len(ids), dtype=torch.float64)
    rows = sae.decoder_rows()
    return [
        (t, ("online_autoencoder_latent", sae.site_layer, None, i, t), latents[t, i] * scale[t] * rows[i])
        for t, i in (latents > 0).nonzero().tolist()
    ]
