"""The oracle for edges into an attention head's value, query and key sides, from a transformers model and autograd.

The value side of attention node (layer, q, k, h) is the head's write projected on the gradient at the query,
p[q,k,h] (v[k, kv(h)] . G[q,h]), G = dObjective / d (the output projection's input for head h at q), both from
transformers' own pass and autograd. It is recomputed from the residual at the key token through the model's
own attention norm (its scale held at the value the model used) and value projection, and its gradient with
respect to that residual is dotted with every write there from the blocks before the layer
(tests/oracle_edges.py's writes). Nothing of actwh is imported.

The query and key sides of (layer, q, k, h) are the probability p[q,k,h], recomputed from the residual at the
query token through the model's own norm (scale held), query projection and rotary embedding against the keys
the model used, or from the residual at the key token through its key projection with the row's other keys
as the model made them; the softmax over the query's row (the model's scaling, soft cap and sliding window)
is taken here. Their attribution is dObjective/dp (autograd) times the activation.

Keys: (query token, key token, source_dst, source_layer, source_head, source_node_index, source_token);
values (activation, attribution), equal for the value side, which is already in the objective's units.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from tests.oracle_edges import writes
from tests.oracle_scalars import _float64, _held_scale_norm, _trace


def projection(block: nn.Module, x: torch.Tensor, which: int) -> torch.Tensor:
    """The query (0), key (1) or value (2) projection's output of a transformers decoder block for its normed
    input x: (heads * dh,)."""
    if hasattr(block, "self_attn"):
        return (block.self_attn.q_proj, block.self_attn.k_proj, block.self_attn.v_proj)[which](x)
    d = x.shape[-1]
    return block.attn.c_attn(x)[which * d : (which + 1) * d]  # GPT-2's fused query, key, value projection


def _rotated(model: nn.Module, block: nn.Module, x: torch.Tensor, position: int) -> torch.Tensor:
    """(heads, dh) rotated by the model's own rotary embedding at `position` (GPT-2 has none)."""
    if not hasattr(block, "self_attn"):
        return x
    cos, sin = _float64(model).model.rotary_emb(x[None, None], torch.tensor([[position]]))
    turned, _ = sys.modules[type(block.self_attn).__module__].apply_rotary_pos_emb(
        x[None, :, None], x[None, :, None], cos, sin
    )
    return turned[0, :, 0]


def expected_value_in_edges(
    model: nn.Module,
    ids: list[int],
    target: int | None,
    distractor: int | None,
    layer: int,
    head: int,
    extra: list | None = None,
) -> dict[tuple, tuple[float, float]]:
    """Every edge into the value side of `head` of `layer` at every (query, key) of one prompt; `extra`: further
    writes (token, source key, vector) to take as sources besides the blocks' (an SAE's latents)."""
    parts, trace = _trace(model, ids, target, distractor)
    n = len(ids)
    att = trace.attention[layer]
    n_heads, n_kv = att.query.shape[0], att.value.shape[0]
    kv, dh = head // (n_heads // n_kv), att.value.shape[-1]
    probs = att.probs.detach()[0]  # (H, q, k)
    grad_out = trace.head_outputs[layer].grad[0][:, head * dh : (head + 1) * dh]  # (q, dh)
    r = (trace.emb if layer == 0 else trace.post_mlp[layer - 1]).detach()[0]
    block, norm = parts.blocks[layer], parts.attn_norm[layer]
    by_key: dict[int, list] = {}
    for t, source, write in [*writes(parts, trace, n, layer - 1, layer - 1), *(extra or [])]:
        by_key.setdefault(t, []).append((source, write))
    out: dict[tuple, tuple[float, float]] = {}
    for k in range(n):
        x = r[k].clone().requires_grad_()
        v = projection(block, _held_scale_norm(norm, x, parts.centred), 2).view(n_kv, dh)[kv]
        stored = att.value[kv, k]
        assert float((v.detach() - stored).abs().max()) < 1e-5 * max(1.0, float(stored.abs().max())), "value differs"
        for q in range(k, n):
            down = probs[head, q, k] * (v @ grad_out[q])
            (grad,) = torch.autograd.grad(down, x, retain_graph=True)
            for source, write in by_key.get(k, []):
                activation = float(grad @ write)
                out[(q, k, *source)] = (activation, activation)
    return out


def expected_qk_in_edges(
    model: nn.Module,
    ids: list[int],
    target: int | None,
    distractor: int | None,
    layer: int,
    head: int,
    side: str,
    extra: list | None = None,
) -> dict[tuple, tuple[float, float]]:
    """Every edge into the query (side 'query') or key ('key') side of `head` of `layer` at every (query, key);
    `extra` as in expected_value_in_edges."""
    parts, trace = _trace(model, ids, target, distractor)
    n = len(ids)
    att = trace.attention[layer]
    n_heads, n_kv = att.query.shape[0], att.key.shape[0]
    kv, dh = head // (n_heads // n_kv), att.key.shape[-1]
    dp = att.probs.grad[0, head]  # (q, k)
    r = (trace.emb if layer == 0 else trace.post_mlp[layer - 1]).detach()[0]
    block, norm = parts.blocks[layer], parts.attn_norm[layer]
    by_token: dict[int, list] = {}
    for t, source, write in [*writes(parts, trace, n, layer - 1, layer - 1), *(extra or [])]:
        by_token.setdefault(t, []).append((source, write))

    def prob(q: int, k: int, query: torch.Tensor, key_k: torch.Tensor) -> torch.Tensor:
        keys = att.key[kv, : q + 1].clone()
        keys = torch.cat([keys[:k], key_k[None], keys[k + 1 :]])
        logits = keys @ query * att.scaling
        if att.softcap:
            logits = att.softcap * torch.tanh(logits / att.softcap)
        allowed = torch.arange(q + 1) > q - att.window if att.window else torch.ones(q + 1, dtype=torch.bool)
        return torch.softmax(logits.masked_fill(~allowed, -torch.inf), dim=0)[k]

    out: dict[tuple, tuple[float, float]] = {}
    for t in range(n):  # the token whose residual the side reads
        x = r[t].clone().requires_grad_()
        which, heads, index = (0, n_heads, head) if side == "query" else (1, n_kv, kv)
        made = _rotated(
            model, block, projection(block, _held_scale_norm(norm, x, parts.centred), which).view(heads, dh), t
        )[index]
        stored = (att.query[head] if side == "query" else att.key[kv])[t]
        assert float((made.detach() - stored).abs().max()) < 1e-5 * max(1.0, float(stored.abs().max())), (
            "q or k differs"
        )
        pairs = [(t, k) for k in range(t + 1)] if side == "query" else [(q, t) for q in range(t, n)]
        for q, k in pairs:
            query, key = (made, att.key[kv, k]) if side == "query" else (att.query[head, q], made)
            down = prob(q, k, query, key)
            (grad,) = torch.autograd.grad(down, x, retain_graph=True)
            for source, write in by_token.get(t, []):
                activation = float(grad @ write)
                out[(q, k, *source)] = (activation, float(dp[q, k]) * activation)
    return out
