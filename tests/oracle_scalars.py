"""The oracle for derived views and for the raw values actwh computes rather than reads off a module:
each scalar of one prompt, from a Hugging Face transformers model.

Tensors are read out of transformers' own modules in float64: forward hooks, and an attention function
registered with transformers that calls the model's own eager attention and keeps its query, key, value,
scaling and probabilities. Each derived scalar is written from its formula in docs/DERIVED_SCALARS.md. Nothing
of actwh is imported: weights are never read in actwh's layout (a head's write is the model's own output
projection applied to that head's slot, a neuron's write the down projection applied to a unit vector),
key/value heads are shared by transformers' repeat_kv, and a norm's scale is read back from what the
norm module output. Self-checks tie the reading-out to the model: the logits give back its probabilities,
the heads' values rebuild its attention output, and the held-scale final norm equals its norm.

A norm's gain is read off the module's behaviour (its output for an all-ones input), never off its
parameter, so a family storing the gain as w and applying 1 + w needs no case. Where a family norms a
block's output before it joins the residual (Gemma 2), a node's write is what that norm makes of it with
its scale at the token held: gain * write / s_post, as docs/DERIVED_SCALARS.md holds the final norm's scale.

Keys are (token, token2, layer, head, node_index), None where the column is NULL.
"""

from __future__ import annotations

import copy
import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import eager_mask
from transformers.models.llama.modeling_llama import repeat_kv

Key = tuple[int | None, int | None, int | None, int | None, int]
# A node as the objective: (location, layer, node index, token, key token or None), 'mlp.post_act' or
# 'attn.qk_probs' (index: the head), token and key counted from 0.
Node = tuple[str, int, int, int, int | None]
Scalars = dict[str, dict[Key, float]]
Put = Callable[[str, Key, "torch.Tensor | float"], None]


@dataclass
class _Attention:
    """One layer's call of the attention function, batch axis dropped: query (H, q, dh), key and value
    (H_kv, k, dh), the scaling applied to q.k, and the probabilities (H, q, k) with their gradient."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    scaling: float
    probs: torch.Tensor
    softcap: float | None  # logits became softcap * tanh(logits / softcap) before the mask
    window: int | None  # keys k with q - window < k <= q (a sliding-window layer), None: every k <= q


_RECORDING: dict[int, _Attention] = {}


def _recording_attention(
    module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask, **kwargs
):  # noqa: ANN001, ANN201
    """The model's own eager attention, recording what it was given and the probabilities it made."""
    eager = sys.modules[type(module).__module__].eager_attention_forward
    out, probs = eager(module, query, key, value, attention_mask, **kwargs)
    probs.retain_grad()
    scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
    _RECORDING[module.layer_idx] = _Attention(
        query[0].detach(),
        key[0].detach(),
        value[0].detach(),
        scaling,
        probs,
        kwargs.get("softcap"),
        kwargs.get("sliding_window"),
    )
    return out, probs


# The eager attention takes the eager (additive) mask: transformers builds masks per attention name.
AttentionInterface.register("oracle_recording", _recording_attention)
AttentionMaskInterface.register("oracle_recording", eager_mask)


@dataclass
class _Trace:
    """What one forward and backward pass left behind, batch axis dropped."""

    emb: torch.Tensor | None = None  # (n, d), block 0's input
    post_attn: dict[int, torch.Tensor] = field(default_factory=dict)  # (n, d), the MLP norm's input
    post_mlp: dict[int, torch.Tensor] = field(default_factory=dict)  # (n, d), the block's output
    delta_attn: dict[int, torch.Tensor] = field(default_factory=dict)  # (n, d), what attention adds to the residual
    delta_mlp: dict[int, torch.Tensor] = field(default_factory=dict)  # (n, d), what the MLP adds to the residual
    head_outputs: dict[int, torch.Tensor] = field(default_factory=dict)  # (n, H*dh), o_proj's input, with its grad
    post_act: dict[int, torch.Tensor] = field(default_factory=dict)  # (n, d_mlp), MLP down projection's input
    norms: dict[tuple[str, int | None], tuple[nn.Module, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    attention: dict[int, _Attention] = field(default_factory=dict)
    final_in: torch.Tensor | None = None  # (n, d), the final norm's input
    logits: torch.Tensor | None = None  # (n, V), as the model outputs them (soft-capped where it caps them)
    uncapped: torch.Tensor | None = None  # (n, V), the unembedding's output
    objective: torch.Tensor | None = None


@dataclass(frozen=True)
class _Parts:
    """Where each quantity lives in one family's transformers modules."""

    blocks: nn.ModuleList
    final_norm: nn.Module
    attn_norm: list[nn.Module] | None  # None: the blocks read the residual as it is (OLMo 2)
    mlp_norm: list[nn.Module] | None
    attn_out: list[nn.Module]  # the attention output projection
    mlp: list[nn.Module]
    mlp_out: list[nn.Module]  # the MLP down projection
    centred: bool  # LayerNorm removes the mean, RMSNorm does not
    head: nn.Module  # the unembedding
    post_attn_norm: list[nn.Module] | None = None  # norms of the block outputs before they join the residual
    post_mlp_norm: list[nn.Module] | None = None


def _parts(model: nn.Module) -> _Parts:
    if model.config.model_type == "gpt2":
        b = model.transformer.h
        return _Parts(
            b,
            model.transformer.ln_f,
            [x.ln_1 for x in b],
            [x.ln_2 for x in b],
            [x.attn.c_proj for x in b],
            [x.mlp for x in b],
            [x.mlp.c_proj for x in b],
            centred=True,
            head=model.lm_head,
        )
    if model.config.model_type == "llama":
        b = model.model.layers
        return _Parts(
            b,
            model.model.norm,
            [x.input_layernorm for x in b],
            [x.post_attention_layernorm for x in b],
            [x.self_attn.o_proj for x in b],
            [x.mlp for x in b],
            [x.mlp.down_proj for x in b],
            centred=False,
            head=model.lm_head,
        )
    if model.config.model_type == "olmo2":
        b = model.model.layers
        return _Parts(
            b,
            model.model.norm,
            None,
            None,
            [x.self_attn.o_proj for x in b],
            [x.mlp for x in b],
            [x.mlp.down_proj for x in b],
            centred=False,
            head=model.lm_head,
            post_attn_norm=[x.post_attention_layernorm for x in b],
            post_mlp_norm=[x.post_feedforward_layernorm for x in b],
        )
    if model.config.model_type == "gemma2":
        b = model.model.layers
        return _Parts(
            b,
            model.model.norm,
            [x.input_layernorm for x in b],
            [x.pre_feedforward_layernorm for x in b],
            [x.self_attn.o_proj for x in b],
            [x.mlp for x in b],
            [x.mlp.down_proj for x in b],
            centred=False,
            head=model.lm_head,
            post_attn_norm=[x.post_attention_layernorm for x in b],
            post_mlp_norm=[x.post_feedforward_layernorm for x in b],
        )
    raise ValueError(f"no oracle for model_type {model.config.model_type!r}")


def _first(out: torch.Tensor | tuple) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _grad(t: torch.Tensor) -> torch.Tensor:
    """dObjective/dt: 0 where t does not feed the objective (a node objective upstream of it)."""
    return t.grad if t.grad is not None else torch.zeros_like(t)


def _keep_grad(t: torch.Tensor) -> torch.Tensor:
    t.retain_grad()
    return t


def _centre(x: torch.Tensor, centred: bool) -> torch.Tensor:
    return x - x.mean(-1, keepdim=True) if centred else x


def _eps(module: nn.Module) -> float:
    return getattr(module, "eps", None) or module.variance_epsilon


def _bias(module: nn.Module) -> torch.Tensor | float:
    return module.bias if getattr(module, "bias", None) is not None else 0.0


def _gain(module: nn.Module, d: int, centred: bool) -> torch.Tensor:
    """(d,): the gain the norm applies. An RMSNorm's, from its output for an all-ones input (whose scale is
    sqrt(1 + eps)); a LayerNorm's (an all-ones input has no spread) is its weight."""
    if centred:
        return module.weight.detach()
    ones = torch.ones(d, dtype=module.weight.dtype)
    with torch.no_grad():
        # forward, not __call__: the module's hooks (the trace's) must not see this input
        return (module.forward(ones) - _bias(module)).double() * (1.0 + _eps(module)) ** 0.5


def _held_scale_norm(module: nn.Module, x: torch.Tensor, centred: bool) -> torch.Tensor:
    """The final norm with its scale sqrt(mean((x - mean x)^2) + eps) detached (held constant)."""
    x = _centre(x, centred)
    out = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + _eps(module)).detach() * _gain(module, x.shape[-1], centred)
    return out + _bias(module)


def _scale_read_back(module: nn.Module, x: torch.Tensor, y: torch.Tensor, centred: bool) -> torch.Tensor:
    """(n,): the s with y = centred(x) / s * gain + bias, fitted per token from the module's output."""
    with torch.no_grad():
        c = _centre(x, centred) * _gain(module, x.shape[-1], centred)
        z = y - _bias(module)
        return (c * c).sum(-1) / (c * z).sum(-1)


@functools.lru_cache(maxsize=4)
def _float64(model: nn.Module) -> nn.Module:
    copied = copy.deepcopy(model).double().eval()
    copied.set_attn_implementation("oracle_recording")
    return copied


def _run(
    model: nn.Module,
    parts: _Parts,
    ids: list[int],
    target: int | None,
    distractor: int | None,
    node: Node | None = None,
) -> _Trace:
    """One forward and backward in transformers with hooks; the objective is actwh's (docs/DERIVED_SCALARS.md):
    target minus distractor logit at the last token with the final scale held, else mean next-token
    cross-entropy; with `node`, that node's activation (the MLP down projection's input, or the attention
    function's probability) at its token, nothing held."""
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

    def keep_norm(name: str, layer: int | None):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            trace.norms[(name, layer)] = (module, args[0].detach()[0], out.detach()[0])

        return hook

    def final_norm(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
        trace.final_in = _keep_grad(args[0])
        trace.norms[("resid.ln_f.scale", None)] = (module, args[0].detach()[0], out.detach()[0])
        if target is None:
            return None
        held = _held_scale_norm(module, args[0], parts.centred)
        # Llama's RMSNorm computes in float32 whatever the model's dtype: agreement to float32 precision
        err = float((held - out).detach().abs().max() / out.detach().abs().max())
        assert err < 1e-6, f"held-scale norm differs from the model's norm by {err:.2g} x max"
        return held

    def keep_uncapped(_m: nn.Module, _args: tuple, out: torch.Tensor) -> None:
        trace.uncapped = out.detach()[0]

    handles.append(parts.blocks[0].register_forward_pre_hook(on_block0, with_kwargs=True))
    for layer, block in enumerate(parts.blocks):
        # what each block adds to the residual: its norm's output where the family norms block outputs
        attn_added = parts.post_attn_norm[layer] if parts.post_attn_norm else parts.attn_out[layer]
        mlp_added = parts.post_mlp_norm[layer] if parts.post_mlp_norm else parts.mlp[layer]
        if parts.attn_norm and parts.mlp_norm:
            handles += [
                parts.attn_norm[layer].register_forward_hook(keep_norm("attn_ln.scale", layer)),
                parts.mlp_norm[layer].register_forward_hook(keep_norm("mlp_ln.scale", layer)),
            ]
        # the residual between the blocks: what the MLP (or its norm) reads
        mlp_reads = parts.mlp_norm[layer] if parts.mlp_norm else parts.mlp[layer]
        handles += [
            mlp_reads.register_forward_pre_hook(keep_input(trace.post_attn, layer)),
            block.register_forward_hook(keep_output(trace.post_mlp, layer)),
            attn_added.register_forward_hook(keep_output(trace.delta_attn, layer)),
            parts.attn_out[layer].register_forward_pre_hook(keep_input(trace.head_outputs, layer, grad=True)),
            mlp_added.register_forward_hook(keep_output(trace.delta_mlp, layer)),
            parts.mlp_out[layer].register_forward_pre_hook(keep_input(trace.post_act, layer, grad=True)),
        ]
        if parts.post_attn_norm and parts.post_mlp_norm:
            handles += [
                parts.post_attn_norm[layer].register_forward_hook(keep_norm("attn_post_ln.scale", layer)),
                parts.post_mlp_norm[layer].register_forward_hook(keep_norm("mlp_post_ln.scale", layer)),
            ]
    handles.append(parts.final_norm.register_forward_hook(final_norm))
    handles.append(parts.head.register_forward_hook(keep_uncapped))
    _RECORDING.clear()
    try:
        x = torch.tensor([ids])
        logits = model(x, use_cache=False).logits[0]
    finally:
        for h in handles:
            h.remove()
    trace.attention = dict(_RECORDING)
    n = len(ids)
    if node is not None:
        location, layer, index, token, key = node
        if location == "mlp.post_act":
            objective = trace.post_act[layer][0, token, index]
        else:
            assert location == "attn.qk_probs", location
            objective = trace.attention[layer].probs[0, index, token, key]
    elif target is not None:
        objective = logits[n - 1, target] - (logits[n - 1, distractor] if distractor is not None else 0.0)
    else:
        log_probs = torch.log_softmax(logits[:-1], dim=-1)
        objective = -log_probs[torch.arange(n - 1), x[0, 1:]].mean()
    objective.backward()
    trace.logits, trace.objective = logits.detach(), objective.detach()
    return trace


def _trace(
    model: nn.Module, ids: list[int], target: int | None, distractor: int | None, node: Node | None = None
) -> tuple[_Parts, _Trace]:
    model = _float64(model)
    parts = _parts(model)
    return parts, _run(model, parts, ids, target, distractor, node)


def _per_query_head(att: _Attention, t: torch.Tensor) -> torch.Tensor:
    """(H_kv, n, dh) -> (n, H, dh): each query head's copy, key/value heads shared as transformers shares them."""
    return repeat_kv(t[None], att.query.shape[0] // t.shape[0])[0].transpose(0, 1)


def _attention_logits(att: _Attention) -> torch.Tensor:
    """(q, k, H): the softmax's input before the mask, q.k times the model's scaling, soft-capped where
    the model caps it."""
    keys = _per_query_head(att, att.key)  # (k, H, dh)
    logits = torch.einsum("hqc,khc->qkh", att.query, keys) * att.scaling
    return att.softcap * torch.tanh(logits / att.softcap) if att.softcap else logits


def _post_norm(parts: _Parts, trace: _Trace, block: str, layer: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(gain (d,), scale (n,)) of the norm after block 'attn' or 'mlp': a node's write w joins the residual
    at token t as gain * w / scale[t] (scale held). Ones where the family norms no block output."""
    if parts.post_attn_norm is None:
        d = trace.post_attn[layer].shape[-1]
        return torch.ones(d, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
    module, x, y = trace.norms[(f"{block}_post_ln.scale", layer)]
    return _gain(module, x.shape[-1], False), _scale_read_back(module, x, y, False)


def expected_raw(model: nn.Module, ids: list[int], target: int | None, distractor: int | None) -> Scalars:
    """The stored rows actwh computes itself, per registry location name: the norm scales (five with norms
    after the blocks, else three) and the attention logits (causal pairs, keys outside a sliding window
    included)."""
    parts, trace = _trace(model, ids, target, distractor)
    out: Scalars = {}
    for (name, layer), (module, x, y) in trace.norms.items():
        scale = _scale_read_back(module, x, y, parts.centred)
        out[name] = {**out.get(name, {}), **{(t, None, layer, None, 0): float(s) for t, s in enumerate(scale)}}
    for layer, att in trace.attention.items():
        logits = _attention_logits(att)
        causal = torch.tril(torch.ones(logits.shape[:2], dtype=torch.bool))
        allowed = causal if att.window is None else causal & ~torch.tril(causal, -att.window)
        masked = logits.masked_fill(~allowed[..., None], -torch.inf)
        probs = att.probs.detach()[0].permute(1, 2, 0)
        assert torch.allclose(torch.softmax(masked, dim=1), probs, atol=1e-6), "logits do not give the model's probs"
        rows = out.setdefault("attn.qk_logits", {})
        for q, k in causal.nonzero().tolist():
            for h in range(logits.shape[2]):
                rows[(q, k, layer, None, h)] = float(logits[q, k, h])
    return out


def expected_scalars(
    model: nn.Module,
    ids: list[int],
    target: int | None,
    distractor: int | None,
    stored_final_grad: bool,
    node: Node | None = None,
) -> Scalars:
    """Every derived view's rows for one prompt stored with both passes of the Tier-1 locations.

    stored_final_grad: the final residual's gradient was stored (every token), else the view gives the
    closed form at the last token, and only for a prompt with a target. node: the backward pass started
    from that node (no target then).
    """
    parts, trace = _trace(model, ids, target, distractor, node)
    n, last = len(ids), len(ids) - 1
    g = _grad(trace.final_in)[0]  # dObjective / d final residual, (n, d)
    out: Scalars = {}

    def put(dst: str, key: Key, value: torch.Tensor | float) -> None:
        out.setdefault(dst, {})[key] = float(value)

    emb = trace.emb.detach()[0]
    for t in range(n):
        put("always_one", (t, None, None, None, 0), 1.0)
        put("resid_post_embedding_norm", (t, None, None, None, 0), emb[t].norm())
        put("token_attribution", (t, None, None, None, 0), emb[t] @ _grad(trace.emb)[0][t])
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


def linearised_objective(model: nn.Module, ids: list[int], target: int, distractor: int | None) -> float:
    """sum_v coef_v c_v (z_v - bias_f . W_U[:, v]) at the last token: what the direct effects of every
    node and bias add up to (docs/DERIVED_SCALARS.md, identity 1), z_v the unembedding's output for token v and
    c_v = dlogit_v / dz_v, 1 - tanh(z_v / cap)^2 under a final soft cap (else 1). Without a cap, the
    objective less the final norm bias's share."""
    parts, trace = _trace(model, ids, target, distractor)
    cap = getattr(model.config, "final_logit_softcapping", None)
    bias = _bias(parts.final_norm)
    with torch.no_grad():
        bias_share = parts.head(torch.as_tensor(bias, dtype=torch.float64).expand(trace.final_in.shape[-1:]))
    total = 0.0
    for v, coef in ((target, 1.0), (distractor, -1.0)):
        if v is None:
            continue
        z = trace.uncapped[-1, v]
        slope = 1 - torch.tanh(z / cap) ** 2 if cap else 1.0
        total += coef * float(slope * (z - bias_share[v]))
    return total


def _head_writes(proj: nn.Module, per_head: torch.Tensor) -> torch.Tensor:
    """(..., H, d): what the output projection writes for each head's slot alone, bias removed."""
    *lead, h, dh = per_head.shape
    slots = torch.zeros(*lead, h, h * dh, dtype=per_head.dtype)
    for head in range(h):
        slots[..., head, head * dh : (head + 1) * dh] = per_head[..., head, :]
    with torch.no_grad():
        return proj(slots) - proj(torch.zeros(h * dh, dtype=per_head.dtype))


def _mlp_scalars(
    put: Put, parts: _Parts, trace: _Trace, layer: int, n: int, direct: bool, g_last: torch.Tensor
) -> None:
    a = trace.post_act[layer]
    da, a = _grad(a)[0], a.detach()[0]
    proj = parts.mlp_out[layer]
    d_mlp = a.shape[1]
    gain, scale = _post_norm(parts, trace, "mlp", layer, n)
    with torch.no_grad():  # row i of W_out: what neuron i alone writes at unit activation
        rows = (proj(torch.eye(d_mlp, dtype=a.dtype)) - proj(torch.zeros(d_mlp, dtype=a.dtype))) * gain
    row_norm = rows.norm(dim=1)
    rebuilt = (a @ rows) / scale[:, None]
    for t in range(n):
        for i in range(d_mlp):
            put("mlp_write_norm", (t, None, layer, None, i), a[t, i] * row_norm[i] / scale[t])
            put("mlp_act_times_grad", (t, None, layer, None, i), a[t, i] * da[t, i])
        for d in range(rows.shape[1]):
            put("resid_delta_mlp_from_mlp_post_act", (t, None, layer, None, d), rebuilt[t, d])
    if direct:
        effects = a[n - 1] * (rows @ g_last) / scale[n - 1]
        for i in range(d_mlp):
            put("mlp_write_to_final_residual_grad", (n - 1, None, layer, None, i), effects[i])


def _attention_scalars(
    put: Put, parts: _Parts, trace: _Trace, layer: int, n: int, direct: bool, g_last: torch.Tensor
) -> None:
    att = trace.attention[layer]
    p, dp = att.probs.detach()[0].permute(1, 2, 0), _grad(att.probs)[0].permute(1, 2, 0)  # (q, k, H)
    v = _per_query_head(att, att.value)  # (k, H, dh)
    n_heads, d_head = v.shape[1:]
    mixed = trace.head_outputs[layer].detach()[0].reshape(n, n_heads, d_head)
    recombined = torch.einsum("qkh,khc->qhc", p, v)
    assert torch.allclose(recombined, mixed, rtol=1e-9, atol=1e-9), "head values do not rebuild the attention output"
    proj = parts.attn_out[layer]
    gain, scale = _post_norm(parts, trace, "attn", layer, n)
    value_write = _head_writes(proj, v) * gain  # (k, H, d): per unit probability, before the scale at q
    summed_write = _head_writes(proj, mixed) * gain  # (q, H, d)
    for q in range(n):
        for h in range(n_heads):
            put("attn_write_norm_per_sequence_token", (q, None, layer, None, h), summed_write[q, h].norm() / scale[q])
            put(
                "attn_act_times_grad_per_sequence_token",
                (q, None, layer, None, h),
                (p[q, : q + 1, h] * dp[q, : q + 1, h]).sum(),
            )
            for k in range(q + 1):
                pair = q * (q + 1) // 2 + k
                norm = p[q, k, h] * value_write[k, h].norm() / scale[q]
                atg = p[q, k, h] * dp[q, k, h]
                put("unflattened_attn_write_norm", (q, k, layer, None, h), norm)
                put("attn_write_norm", (pair, None, layer, None, h), norm)
                put("unflattened_attn_act_times_grad", (q, k, layer, None, h), atg)
                put("attn_act_times_grad", (pair, None, layer, None, h), atg)
    if not direct:
        return
    last = n - 1
    for h in range(n_heads):
        effects = p[last, :, h] * (value_write[:, h] @ g_last) / scale[last]
        put("attn_write_to_final_residual_grad_per_sequence_token", (last, None, layer, None, h), effects.sum())
        for k in range(n):
            put("unflattened_attn_write_to_final_residual_grad", (last, k, layer, None, h), effects[k])
            put("attn_write_to_final_residual_grad", (last * (last + 1) // 2 + k, None, layer, None, h), effects[k])
