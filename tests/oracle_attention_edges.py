"""The oracle for edges into an attention head's value side, from a transformers model and autograd.

The value side of attention node (layer, q, k, h) is the head's write projected on the gradient at the query,
p[q,k,h] (v[k, kv(h)] . G[q,h]), G = dObjective / d (the output projection's input for head h at q), both from
transformers' own pass and autograd. It is recomputed from the residual at the key token through the model's
own attention norm (its scale held at the value the model used) and value projection, and its gradient with
respect to that residual is dotted with every write there from the blocks before the layer
(tests/oracle_edges.py's writes). Nothing of actwh is imported.

Keys: (query token, key token, source_dst, source_layer, source_head, source_node_index, source_token);
values (activation, attribution), equal here: the value side is already in the objective's units.
"""

from __future__ import annotations

import torch
from torch import nn

from tests.oracle_edges import writes
from tests.oracle_scalars import _held_scale_norm, _trace


def value_projection(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The value projection's output (H_kv * dh,) of a transformers decoder block for its normed input x."""
    if hasattr(block, "self_attn"):
        return block.self_attn.v_proj(x)
    d = x.shape[-1]
    return block.attn.c_attn(x)[2 * d : 3 * d]  # GPT-2's fused query, key, value projection


def expected_value_in_edges(
    model: nn.Module, ids: list[int], target: int | None, distractor: int | None, layer: int, head: int
) -> dict[tuple, tuple[float, float]]:
    """Every edge into the value side of `head` of `layer` at every (query, key) of one prompt."""
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
    for t, source, write in writes(parts, trace, n, layer - 1, layer - 1):
        by_key.setdefault(t, []).append((source, write))
    out: dict[tuple, tuple[float, float]] = {}
    for k in range(n):
        x = r[k].clone().requires_grad_()
        v = value_projection(block, _held_scale_norm(norm, x, parts.centred)).view(n_kv, dh)[kv]
        stored = att.value[kv, k]
        assert float((v.detach() - stored).abs().max()) < 1e-5 * max(1.0, float(stored.abs().max())), "value differs"
        for q in range(k, n):
            down = probs[head, q, k] * (v @ grad_out[q])
            (grad,) = torch.autograd.grad(down, x, retain_graph=True)
            for source, write in by_key.get(k, []):
                activation = float(grad @ write)
                out[(q, k, *source)] = (activation, activation)
    return out
