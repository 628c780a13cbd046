"""The derived views' oracle: every derived scalar of one prompt, from a Hugging Face transformers model.

Tensors are read out of transformers' own modules (forward hooks, attention probabilities it returns,
autograd through its forward) in float64, and each scalar is written from its formula in
DERIVED_SCALARS.md. Nothing of actwh is imported: weights are never read in actwh's layout, a head's
write is the model's own output projection applied to that head's slot, and key/value heads are shared
among query heads by transformers' repeat_kv. Two self-checks tie the reading-out to the model: the
heads' recombined values equal the attention output the model computed, and the held-scale final norm
equals the model's norm.

Keys are (token, token2, layer, head, node_index), None where the view's column is NULL.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field

import torch
from torch import nn

Key = tuple[int | None, int | None, int | None, int | None, int]
Scalars = dict[str, dict[Key, float]]


@dataclass
class _Trace:
    """What one forward and backward pass left behind, batch axis dropped."""

    emb: torch.Tensor | None = None  # (n, d), block 0's input
    post_attn: dict[int, torch.Tensor] = field(default_factory=dict)  # (n, d), the MLP norm's input
    post_mlp: dict[int, torch.Tensor] = field(default_factory=dict)  # (n, d), the block's output
    delta_attn: dict[int, torch.Tensor] = field(default_factory=dict)  # (n, d), output projection's output
    delta_mlp: dict[int, torch.Tensor] = field(default_factory=dict)  # (n, d), the MLP's output
    head_outputs: dict[int, torch.Tensor] = field(default_factory=dict)  # (n, H*dh), output projection's input
    values: dict[int, torch.Tensor] = field(default_factory=dict)  # (n, H_kv*dh), value projection's output
    post_act: dict[int, torch.Tensor] = field(default_factory=dict)  # (n, d_mlp), MLP down projection's input
    final_in: torch.Tensor | None = None  # (n, d), the final norm's input
    probs: list[torch.Tensor] = field(default_factory=list)  # (H, q, k) per layer
    logits: torch.Tensor | None = None  # (n, V)
    objective: torch.Tensor | None = None


@dataclass(frozen=True)
class _Parts:
    """Where each quantity lives in one family's transformers modules."""

    blocks: nn.ModuleList
    final_norm: nn.Module
    mlp_norm: list[nn.Module]
    attn_out: list[nn.Module]  # the attention output projection
    value_source: list[nn.Module]
    mlp: list[nn.Module]
    mlp_out: list[nn.Module]  # the MLP down projection
    n_heads: int
    n_kv_heads: int
    d_head: int
    centred: bool  # LayerNorm removes the mean, RMSNorm does not


def _parts(model: nn.Module) -> _Parts:
    cfg = model.config
    if cfg.model_type == "gpt2":
        blocks = model.transformer.h
        return _Parts(
            blocks,
            model.transformer.ln_f,
            [b.ln_2 for b in blocks],
            [b.attn.c_proj for b in blocks],
            [b.attn.c_attn for b in blocks],
            [b.mlp for b in blocks],
            [b.mlp.c_proj for b in blocks],
            cfg.n_head,
            cfg.n_head,
            cfg.n_embd // cfg.n_head,
            centred=True,
        )
    if cfg.model_type == "llama":
        blocks = model.model.layers
        return _Parts(
            blocks,
            model.model.norm,
            [b.post_attention_layernorm for b in blocks],
            [b.self_attn.o_proj for b in blocks],
            [b.self_attn.v_proj for b in blocks],
            [b.mlp for b in blocks],
            [b.mlp.down_proj for b in blocks],
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            centred=False,
        )
    raise ValueError(f"no oracle for model_type {cfg.model_type!r}")


def _first(out: torch.Tensor | tuple) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _keep_grad(t: torch.Tensor) -> torch.Tensor:
    t.retain_grad()
    return t


def _held_scale_norm(module: nn.Module, x: torch.Tensor, centred: bool) -> torch.Tensor:
    """The final norm with its scale sqrt(mean((x - mean x)^2) + eps) detached (held constant)."""
    eps = getattr(module, "eps", None) or module.variance_epsilon
    x = x - x.mean(-1, keepdim=True) if centred else x
    out = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps).detach() * module.weight
    return out + module.bias if getattr(module, "bias", None) is not None else out


@functools.lru_cache(maxsize=4)
def _float64(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).double().eval()


def _run(model: nn.Module, parts: _Parts, ids: list[int], target: int | None, distractor: int | None) -> _Trace:
    """One forward and backward in transformers with hooks; the objective is actwh's (DERIVED_SCALARS.md):
    target minus distractor logit at the last token with the final scale held, else mean next-token
    cross-entropy."""
    trace = _Trace()
    handles = []

    def on_block0(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        trace.emb = _keep_grad(args[0] if args else kwargs["hidden_states"])

    def keep_input(store: dict[int, torch.Tensor], layer: int, grad: bool = False):  # noqa: ANN202
        def hook(_m: nn.Module, args: tuple) -> None:
            store[layer] = _keep_grad(args[0]) if grad else args[0]

        return hook

    def keep_output(store: dict[int, torch.Tensor], layer: int):  # noqa: ANN202
        def hook(_m: nn.Module, _args: tuple, out: torch.Tensor | tuple) -> None:
            store[layer] = _first(out)

        return hook

    def final_norm(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
        trace.final_in = _keep_grad(args[0])
        if target is None:
            return None
        held = _held_scale_norm(module, args[0], parts.centred)
        # Llama's RMSNorm computes in float32 whatever the model's dtype: agreement to float32 precision
        err = float((held - out).detach().abs().max() / out.detach().abs().max())
        assert err < 1e-6, f"held-scale norm differs from the model's norm by {err:.2g} x max"
        return held

    handles.append(parts.blocks[0].register_forward_pre_hook(on_block0, with_kwargs=True))
    for layer, block in enumerate(parts.blocks):
        handles += [
            parts.mlp_norm[layer].register_forward_pre_hook(keep_input(trace.post_attn, layer)),
            block.register_forward_hook(keep_output(trace.post_mlp, layer)),
            parts.attn_out[layer].register_forward_hook(keep_output(trace.delta_attn, layer)),
            parts.attn_out[layer].register_forward_pre_hook(keep_input(trace.head_outputs, layer)),
            parts.value_source[layer].register_forward_hook(keep_output(trace.values, layer)),
            parts.mlp[layer].register_forward_hook(keep_output(trace.delta_mlp, layer)),
            parts.mlp_out[layer].register_forward_pre_hook(keep_input(trace.post_act, layer, grad=True)),
        ]
    handles.append(parts.final_norm.register_forward_hook(final_norm))
    try:
        x = torch.tensor([ids])
        out = model(x, output_attentions=True, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    trace.probs = [_keep_grad(a) for a in out.attentions]
    logits = out.logits[0]
    n = len(ids)
    if target is not None:
        objective = logits[n - 1, target] - (logits[n - 1, distractor] if distractor is not None else 0.0)
    else:
        log_probs = torch.log_softmax(logits[:-1], dim=-1)
        objective = -log_probs[torch.arange(n - 1), x[0, 1:]].mean()
    objective.backward()
    trace.logits, trace.objective = logits.detach(), objective.detach()
    return trace


def _value_heads(parts: _Parts, trace: _Trace, layer: int, n: int) -> torch.Tensor:
    """(n, H, dh): each query head's values, key/value heads shared as transformers shares them."""
    from transformers.models.llama.modeling_llama import repeat_kv

    raw = trace.values[layer][0].detach()
    d = parts.n_heads * parts.d_head
    if raw.shape[-1] == 3 * d:  # GPT-2's fused query/key/value projection: values are the last third
        raw = raw[..., 2 * d :]
    per_kv = raw.reshape(n, parts.n_kv_heads, parts.d_head).transpose(0, 1)[None]
    return repeat_kv(per_kv, parts.n_heads // parts.n_kv_heads)[0].transpose(0, 1)


def _head_writes(proj: nn.Module, per_head: torch.Tensor) -> torch.Tensor:
    """(..., H, d): what the output projection writes for each head's slot alone, bias removed."""
    *lead, h, dh = per_head.shape
    slots = torch.zeros(*lead, h, h * dh, dtype=per_head.dtype)
    for head in range(h):
        slots[..., head, head * dh : (head + 1) * dh] = per_head[..., head, :]
    with torch.no_grad():
        return proj(slots) - proj(torch.zeros(h * dh, dtype=per_head.dtype))


def expected_scalars(
    model: nn.Module, ids: list[int], target: int | None, distractor: int | None, stored_final_grad: bool
) -> Scalars:
    """Every derived view's rows for one prompt stored with both passes of the Tier-1 locations.

    stored_final_grad: the final residual's gradient was stored (every token), else the view gives the
    closed form at the last token, and only for a prompt with a target.
    """
    model = _float64(model)
    parts = _parts(model)
    trace = _run(model, parts, ids, target, distractor)
    n, last = len(ids), len(ids) - 1
    g = trace.final_in.grad[0]  # dObjective / d final residual, (n, d)
    out: Scalars = {}

    def put(dst: str, key: Key, value: torch.Tensor | float) -> None:
        out.setdefault(dst, {})[key] = float(value)

    emb = trace.emb.detach()[0]
    for t in range(n):
        put("always_one", (t, None, None, None, 0), 1.0)
        put("resid_post_embedding_norm", (t, None, None, None, 0), emb[t].norm())
        put("token_attribution", (t, None, None, None, 0), emb[t] @ trace.emb.grad[0][t])
    put("loss", (last, None, None, None, 0), trace.objective)
    if stored_final_grad or target is not None:
        for t in range(n) if stored_final_grad else (last,):
            for d in range(g.shape[1]):
                put("final_residual_grad", (t, None, None, None, d), g[t, d])
    if target is not None:
        put("resid_post_embedding_proj_to_final_residual_grad", (last, None, None, None, 0), emb[last] @ g[last])
        other = trace.logits[last, distractor] if distractor is not None else 0.0
        put("logit_diff", (last, None, None, None, 0), trace.logits[last, target] - other)

    for layer in range(len(parts.blocks)):
        _mlp_scalars(put, parts, trace, layer, n, target is not None, g[last])
        _attention_scalars(put, parts, trace, layer, n, target is not None, g[last])
        for dst, store in (
            ("resid_post_mlp", trace.post_mlp),
            ("resid_post_attn", trace.post_attn),
            ("mlp_layer_write", trace.delta_mlp),
            ("attn_layer_write", trace.delta_attn),
        ):
            x = store[layer].detach()[0]
            for t in range(n):
                put(f"{dst}_norm", (t, None, layer, None, 0), x[t].norm())
            if target is not None:
                name = f"{dst}_to_final_residual_grad" if "layer_write" in dst else f"{dst}_proj_to_final_residual_grad"
                put(name, (last, None, layer, None, 0), x[last] @ g[last])
    return out


def _mlp_scalars(put, parts: _Parts, trace: _Trace, layer: int, n: int, direct: bool, g_last) -> None:  # noqa: ANN001
    a = trace.post_act[layer]
    da, a = a.grad[0], a.detach()[0]
    proj = parts.mlp_out[layer]
    d_mlp = a.shape[1]
    with torch.no_grad():  # row i of W_out: what neuron i alone writes at unit activation
        rows = proj(torch.eye(d_mlp, dtype=a.dtype)) - proj(torch.zeros(d_mlp, dtype=a.dtype))
    row_norm = rows.norm(dim=1)
    rebuilt = a @ rows
    for t in range(n):
        for i in range(d_mlp):
            put("mlp_write_norm", (t, None, layer, None, i), a[t, i] * row_norm[i])
            put("mlp_act_times_grad", (t, None, layer, None, i), a[t, i] * da[t, i])
        for d in range(rows.shape[1]):
            put("resid_delta_mlp_from_mlp_post_act", (t, None, layer, None, d), rebuilt[t, d])
    if direct:
        effects = a[n - 1] * (rows @ g_last)
        for i in range(d_mlp):
            put("mlp_write_to_final_residual_grad", (n - 1, None, layer, None, i), effects[i])


def _attention_scalars(put, parts: _Parts, trace: _Trace, layer: int, n: int, direct: bool, g_last) -> None:  # noqa: ANN001
    p_full = trace.probs[layer]
    p, dp = p_full.detach()[0].permute(1, 2, 0), p_full.grad[0].permute(1, 2, 0)  # (q, k, H)
    v = _value_heads(parts, trace, layer, n)  # (k, H, dh)
    mixed = trace.head_outputs[layer].detach()[0].reshape(n, parts.n_heads, parts.d_head)
    recombined = torch.einsum("qkh,khc->qhc", p, v)
    assert torch.allclose(recombined, mixed, rtol=1e-9, atol=1e-9), "head values do not rebuild the attention output"
    proj = parts.attn_out[layer]
    value_write = _head_writes(proj, v)  # (k, H, d): per unit probability
    summed_write = _head_writes(proj, mixed)  # (q, H, d)
    for q in range(n):
        for h in range(parts.n_heads):
            put("attn_write_norm_per_sequence_token", (q, None, layer, None, h), summed_write[q, h].norm())
            put(
                "attn_act_times_grad_per_sequence_token",
                (q, None, layer, None, h),
                (p[q, : q + 1, h] * dp[q, : q + 1, h]).sum(),
            )
            for k in range(q + 1):
                pair = q * (q + 1) // 2 + k
                norm = p[q, k, h] * value_write[k, h].norm()
                atg = p[q, k, h] * dp[q, k, h]
                put("unflattened_attn_write_norm", (q, k, layer, None, h), norm)
                put("attn_write_norm", (pair, None, layer, None, h), norm)
                put("unflattened_attn_act_times_grad", (q, k, layer, None, h), atg)
                put("attn_act_times_grad", (pair, None, layer, None, h), atg)
    if not direct:
        return
    last = n - 1
    for h in range(parts.n_heads):
        effects = p[last, :, h] * (value_write[:, h] @ g_last)
        put("attn_write_to_final_residual_grad_per_sequence_token", (last, None, layer, None, h), effects.sum())
        for k in range(n):
            put("unflattened_attn_write_to_final_residual_grad", (last, k, layer, None, h), effects[k])
            put("attn_write_to_final_residual_grad", (last * (last + 1) // 2 + k, None, layer, None, h), effects[k])
