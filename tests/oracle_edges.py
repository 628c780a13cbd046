"""The oracle for the edge macros: edges into one MLP neuron of one prompt, from a transformers model and autograd.

For each token t the neuron's activation is recomputed from the residual the MLP reads (its norm's scale held
at the value the model used, as actwh holds it), through the model's own MLP module; its gradient with
respect to that residual is dotted with every write into the residual before the MLP, each taken from the
model's own modules (tests/oracle_scalars.py's trace: the embedding block 0 reads, each head's slot through
the output projection, each neuron's row of the down projection, the projections' biases, the norms after
the blocks with their scales held). Nothing of actwh is imported.

Keys: (token, source_dst, source_layer, source_head, source_node_index, source_token); values
(activation, attribution), attribution = dObjective/da (autograd through transformers) x activation.
"""

from __future__ import annotations

import torch
from torch import nn

from tests.oracle_scalars import _head_writes, _held_scale_norm, _per_query_head, _post_norm, _trace

EdgeKey = tuple[int, str, int | None, int | None, int | None, int]


def neuron(mlp: nn.Module, x: torch.Tensor, j: int) -> torch.Tensor:
    """Neuron j's activation of transformers' MLP module `mlp` for its input x (d,)."""
    if hasattr(mlp, "gate_proj"):  # gated: act(gate) * up
        return mlp.act_fn(mlp.gate_proj(x)[j]) * mlp.up_proj(x)[j]
    return mlp.act(mlp.c_fc(x))[j]


def _bias_write(proj: nn.Module, d_in: int) -> torch.Tensor:
    with torch.no_grad():
        return proj(torch.zeros(d_in, dtype=torch.float64))


def reads(model: nn.Module, ids: list[int], target: int | None, distractor: int | None, layer: int, j: int):  # noqa: ANN201
    """(parts, trace, grads (n, d): d a[layer, t, j] / d residual with the norm scale held, per token)."""
    parts, trace = _trace(model, ids, target, distractor)
    r = trace.post_attn[layer].detach()[0]
    norm = parts.mlp_norm[layer] if parts.mlp_norm else None
    mlp = parts.mlp[layer]
    stored = trace.post_act[layer].detach()[0]
    grads = []
    for t in range(len(ids)):
        x = r[t].clone().requires_grad_()
        a = neuron(mlp, _held_scale_norm(norm, x, parts.centred) if norm is not None else x, j)
        # Llama's RMSNorm computes in float32 whatever the model's dtype: agreement to float32 precision
        assert abs(float(a.detach()) - float(stored[t, j])) < 1e-5 * max(1.0, abs(float(a.detach()))), "neuron differs"
        (grad,) = torch.autograd.grad(a, x)
        grads.append(grad)
    return parts, trace, torch.stack(grads)


def writes(parts, trace, n: int, last_attn: int, last_mlp: int):  # noqa: ANN001, ANN201
    """Every write into the residual at every token of one prompt from the embedding, the attention layers up
    to last_attn and the MLP layers up to last_mlp, as (token, (source_dst, source_layer, source_head,
    source_node_index, source_token), write (d,)), each from the model's own modules."""
    emb = trace.emb.detach()[0]
    for t in range(n):
        yield t, ("resid_post_embedding", None, None, None, t), emb[t]
    for up in range(last_attn + 1):
        att = trace.attention[up]
        p = att.probs.detach()[0].permute(1, 2, 0)  # (q, k, H)
        v = _per_query_head(att, att.value)  # (k, H, dh)
        proj = parts.attn_out[up]
        gain, scale = _post_norm(parts, trace, "attn", up, n)
        value_write = _head_writes(proj, v) * gain  # (k, H, d)
        bias = _bias_write(proj, proj.in_features if hasattr(proj, "in_features") else proj.weight.shape[0]) * gain
        for t in range(n):
            yield t, ("attn_residual_bias", up, None, None, t), bias / scale[t]
            for h in range(v.shape[1]):
                for k in range(t + 1):
                    yield t, ("attn_qk_probs", up, h, h, k), p[t, k, h] * value_write[k, h] / scale[t]
    for up in range(last_mlp + 1):
        a = trace.post_act[up].detach()[0]
        proj = parts.mlp_out[up]
        d_mlp = a.shape[1]
        gain, scale = _post_norm(parts, trace, "mlp", up, n)
        with torch.no_grad():
            rows = (proj(torch.eye(d_mlp, dtype=a.dtype)) - proj(torch.zeros(d_mlp, dtype=a.dtype))) * gain
        bias = _bias_write(proj, d_mlp) * gain
        for t in range(n):
            yield t, ("mlp_residual_bias", up, None, None, t), bias / scale[t]
            for i in range(d_mlp):
                yield t, ("mlp_post_act", up, None, i, t), a[t, i] * rows[i] / scale[t]


def expected_in_edges(
    model: nn.Module, ids: list[int], target: int | None, distractor: int | None, layer: int, j: int
) -> dict[EdgeKey, tuple[float, float]]:
    """Every edge into neuron j of `layer` at every token of one prompt (the attention of the neuron's own layer
    writes before its MLP)."""
    parts, trace, grads = reads(model, ids, target, distractor, layer, j)
    da = trace.post_act[layer].grad[0][:, j]
    out: dict[EdgeKey, tuple[float, float]] = {}
    for t, source, write in writes(parts, trace, len(ids), layer, layer - 1):
        activation = float(grads[t] @ write)
        out[(t, *source)] = (activation, float(da[t]) * activation)
    return out


def read_sum(model: nn.Module, ids: list[int], layer: int, j: int) -> list[float]:
    """Per token, what the in-edge activations into neuron j of `layer` add up to by the decomposition identity
    (docs/DERIVED_SCALARS.md): sum over the neuron's reads of slope x (pre-activation - its bias - the norm bias's
    read), from the MLP module's own projections: phi'(z) (z - b - beta . W) for a plain MLP, and for a gated
    one phi'(g) m (g - b_g - beta . W_g) + phi(g) (m - b_m - beta . W_m)."""
    parts, trace = _trace(model, ids, None, None)
    norm = parts.mlp_norm[layer] if parts.mlp_norm else None
    mlp = parts.mlp[layer]
    r = trace.post_attn[layer].detach()[0]
    out = []
    for t in range(len(ids)):
        x = _held_scale_norm(norm, r[t], parts.centred) if norm is not None else r[t]
        beta = norm.bias.detach() if norm is not None and getattr(norm, "bias", None) is not None else 0 * x
        with torch.no_grad():
            if hasattr(mlp, "gate_proj"):
                g, m = mlp.gate_proj(x)[j], mlp.up_proj(x)[j]
                g_read = g - mlp.gate_proj(beta)[j]  # W_g . (x - beta), the projection's bias cancels
                m_read = m - mlp.up_proj(beta)[j]
                gv = g.clone().requires_grad_()
                with torch.enable_grad():
                    (slope,) = torch.autograd.grad(mlp.act_fn(gv), gv)
                out.append(float(slope * m * g_read + mlp.act_fn(g) * m_read))
            else:
                z = mlp.c_fc(x)[j]
                z_read = z - mlp.c_fc(beta)[j]
                zv = z.clone().requires_grad_()
                with torch.enable_grad():
                    (slope,) = torch.autograd.grad(mlp.act(zv), zv)
                out.append(float(slope * z_read))
    return out
