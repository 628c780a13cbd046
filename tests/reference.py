"""An independent capture: Hugging Face transformers' own models, read through module hooks.

Every registry location for one unpadded prompt, forward values and autograd gradients, in the
registry's layout (tokens first, heads, then channels), so tests can compare the hooked model with it.
Nothing here imports the product: values come from transformers' modules (hooks on its norms,
projections and blocks, and its own attention function, which sees queries and keys after rotary),
and the few scalars transformers never materialises (norm scales, pre-softmax logits, write norms) are
computed here in plain torch from their definitions or by running transformers' own output projection.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers.models.llama.modeling_llama import repeat_kv

Key = tuple[str, int | None]

CAPTURE = "actwh_reference_capture"


@dataclass(frozen=True)
class Anatomy:
    """Where a transformers model family keeps each part (attribute paths from the model or a block)."""

    body: str
    blocks: str
    pre_attn_norm: str | None  # None: the block reads the residual as it is (OLMo 2)
    pre_mlp_norm: str | None
    final_norm: str
    attention: str
    out_proj: str  # inside a block
    mlp: str
    pre_act: str  # the module whose output is mlp.pre_act (the gate for gated MLPs)
    mlp_out: str  # the module whose input is mlp.post_act
    centred: bool  # LayerNorm (mean removed) or RMSNorm
    unit_offset: bool = False  # the norm's gain is stored as w and applied as 1 + w
    post_attn_norm: str | None = None
    post_mlp_norm: str | None = None
    fused_gate_up: bool = False  # pre_act's module outputs the gate and the up projection, gate first


_LLAMA = Anatomy(
    body="model",
    blocks="layers",
    pre_attn_norm="input_layernorm",
    pre_mlp_norm="post_attention_layernorm",
    final_norm="norm",
    attention="self_attn",
    out_proj="self_attn.o_proj",
    mlp="mlp",
    pre_act="mlp.gate_proj",
    mlp_out="mlp.down_proj",
    centred=False,
)

ANATOMY: dict[str, Anatomy] = {
    "gpt2": Anatomy(
        body="transformer",
        blocks="h",
        pre_attn_norm="ln_1",
        pre_mlp_norm="ln_2",
        final_norm="ln_f",
        attention="attn",
        out_proj="attn.c_proj",
        mlp="mlp",
        pre_act="mlp.c_fc",
        mlp_out="mlp.c_proj",
        centred=True,
    ),
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "gemma": Anatomy(**{**_LLAMA.__dict__, "unit_offset": True}),
    "qwen3": _LLAMA,
    "olmo2": Anatomy(
        **{
            **_LLAMA.__dict__,
            "pre_attn_norm": None,
            "pre_mlp_norm": None,
            "post_attn_norm": "post_attention_layernorm",
            "post_mlp_norm": "post_feedforward_layernorm",
        }
    ),
    "phi3": Anatomy(**{**_LLAMA.__dict__, "pre_act": "mlp.gate_up_proj", "fused_gate_up": True}),
    "gemma2": Anatomy(
        **{
            **_LLAMA.__dict__,
            "unit_offset": True,
            "pre_mlp_norm": "pre_feedforward_layernorm",
            "post_attn_norm": "post_attention_layernorm",
            "post_mlp_norm": "post_feedforward_layernorm",
        }
    ),
    "gpt_neox": Anatomy(
        body="gpt_neox",
        blocks="layers",
        pre_attn_norm="input_layernorm",
        pre_mlp_norm="post_attention_layernorm",
        final_norm="final_layer_norm",
        attention="attention",
        out_proj="attention.dense",
        mlp="mlp",
        pre_act="mlp.dense_h_to_4h",
        mlp_out="mlp.dense_4h_to_h",
        centred=True,
    ),
}


def _get(obj: object, path: str) -> nn.Module:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[return-value]


# The attention function the capture installs: the family's own eager attention, with its arguments
# (queries and keys after rotary, values, the scaling it applies) and its probabilities kept.
_attention_calls: list[dict[str, torch.Tensor | float]] = []


def _capturing_attention(module: nn.Module, query, key, value, attention_mask, **kwargs):  # noqa: ANN001, ANN202
    eager = sys.modules[type(module).__module__].eager_attention_forward
    for t in (query, key, value):
        t.retain_grad()
    out, weights = eager(module, query, key, value, attention_mask, **kwargs)
    weights.retain_grad()
    _attention_calls.append(
        {"q": query, "k": key, "v": value, "p": weights, "scaling": kwargs["scaling"], "softcap": kwargs.get("softcap")}
    )
    return out, weights


def _register_capture() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(CAPTURE, _capturing_attention)
    AttentionMaskInterface.register(CAPTURE, eager_mask)


@contextmanager
def _capturing(model: nn.Module) -> Iterator[None]:
    _register_capture()
    previous = model.config._attn_implementation
    model.set_attn_implementation(CAPTURE)
    _attention_calls.clear()
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


class _HeldScale(nn.Module):
    """A final norm whose value is transformers' own and whose scale is held constant for the gradient:
    the reference objective's convention. With the scale fixed the norm is affine, so its Jacobian is
    gain * P / scale, P removing the mean for LayerNorm."""

    def __init__(self, norm: nn.Module, anatomy: Anatomy) -> None:
        super().__init__()
        self.norm, self.anatomy = norm, anatomy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value = self.norm(x)
        scale = norm_scale(x.detach(), self.norm, self.anatomy)
        gain = norm_gain(self.norm, self.anatomy)
        delta = x - x.detach()
        if self.anatomy.centred:
            delta = delta - delta.mean(-1, keepdim=True)
        return value.detach() + delta / scale * gain


def norm_eps(norm: nn.Module) -> float:
    return float(getattr(norm, "eps", None) or getattr(norm, "variance_epsilon", None))


def norm_gain(norm: nn.Module, anatomy: Anatomy) -> torch.Tensor:
    gain = norm.weight.detach()
    return 1.0 + gain if anatomy.unit_offset else gain


def norm_scale(x: torch.Tensor, norm: nn.Module, anatomy: Anatomy) -> torch.Tensor:
    """sqrt(mean((x - mean x)^2) + eps) for LayerNorm, sqrt(mean(x^2) + eps) for RMSNorm, per token."""
    x = x.double()
    if anatomy.centred:
        x = x - x.mean(-1, keepdim=True)
    return torch.sqrt(x.pow(2).mean(-1, keepdim=True) + norm_eps(norm)).float()


def _write_norms(out_proj: nn.Module, per_head: torch.Tensor, gain: torch.Tensor | float = 1.0) -> torch.Tensor:
    """||gain * (x[t, h] W_O[h])|| for (t, h, c) vectors, by running transformers' output projection on each
    head's channels alone (the other heads' zero), its bias taken off; `gain` is that of a norm after the
    attention block (the registry's write norms carry it, and leave that norm's scale to the views)."""
    n, heads, channels = per_head.shape
    with torch.no_grad():
        bias = out_proj(per_head.new_zeros(1, heads * channels))
        norms = []
        for h in range(heads):
            only = per_head.new_zeros(n, heads, channels)
            only[:, h] = per_head[:, h]
            norms.append(((out_proj(only.reshape(n, heads * channels)) - bias) * gain).norm(dim=-1))
    return torch.stack(norms, dim=-1)


class _Values:
    """Forward values and gradients in the registry's layout, keys (location, layer)."""

    def __init__(self, anatomy: Anatomy) -> None:
        self.anatomy = anatomy
        self.fwd: dict[Key, torch.Tensor] = {}
        self.grad: dict[Key, torch.Tensor] = {}

    def put(
        self, key: Key, t: torch.Tensor, layout: Callable = lambda z: z, grad_layout: Callable | None = None
    ) -> None:
        self.fwd[key] = layout(t.detach()[0])
        if t.grad is not None:
            self.grad[key] = (grad_layout or layout)(t.grad[0])

    def put_scale(self, key: Key, norm: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        """The norm's scale s and, as y = centred x / s * gain + bias, dL/ds = -sum_d dL/dy_d (y_d - bias_d) / s."""
        scale = norm_scale(x.detach()[0], norm, self.anatomy)
        self.fwd[key] = scale
        if y.grad is not None:  # in float64: the sum cancels, and float32 would add its own error
            bias = norm.bias.detach().double() if getattr(norm, "bias", None) is not None else 0.0
            dy, y64 = y.grad[0].double(), y.detach()[0].double()
            self.grad[key] = (-(dy * (y64 - bias)).sum(-1, keepdim=True) / scale.double()).float()

    def put_attention(
        self, layer: int, call: dict, out_proj: nn.Module, v_out: torch.Tensor, post_norm: nn.Module | None
    ) -> None:
        """One attention call's queries, keys, values and probabilities, and what follows from them."""
        q, k, v, p = call["q"], call["k"], call["v"], call["p"]
        heads, kv_heads = q.shape[1], k.shape[1]
        root = math.sqrt(call["scaling"])  # the registry splits the logit scaling evenly between q and k
        self.put(("attn.q", layer), q, lambda z: z.transpose(0, 1) * root, lambda z: z.transpose(0, 1) / root)
        self.put(("attn.k", layer), k, lambda z: z.transpose(0, 1) * root, lambda z: z.transpose(0, 1) / root)
        self.put(("attn.v", layer), v, lambda z: z.transpose(0, 1))
        self.put(("attn.qk_probs", layer), p, lambda z: z.permute(1, 2, 0))
        self.put(("attn.v_out", layer), v_out, lambda z: z.reshape(z.shape[0], heads, -1))
        # each key/value head serves several query heads, spread as transformers' own repeat_kv does
        k_per_head = repeat_kv(k.detach(), heads // kv_heads)[0].double()
        v_per_head = repeat_kv(v.detach(), heads // kv_heads)[0]
        logits = torch.einsum("hqc,hkc->qkh", q.detach()[0].double(), k_per_head) * call["scaling"]
        if call["softcap"] is not None:
            logits = call["softcap"] * torch.tanh(logits / call["softcap"])
        self.fwd[("attn.qk_logits", layer)] = logits.float()
        if p.grad is not None:
            probs, dp = p.detach()[0].double(), p.grad[0].double()
            # the softmax Jacobian over keys: dS = p (dp - sum_k p dp)
            self.grad[("attn.qk_logits", layer)] = (
                (probs * (dp - (probs * dp).sum(-1, keepdim=True))).permute(1, 2, 0).float()
            )
        gain = norm_gain(post_norm, self.anatomy) if post_norm is not None else 1.0
        self.fwd[("attn.v_write_norm", layer)] = _write_norms(out_proj, v_per_head.transpose(0, 1), gain)
        self.fwd[("attn.v_out_write_norm", layer)] = _write_norms(out_proj, self.fwd[("attn.v_out", layer)], gain)


def hf_capture(
    hf_model: nn.Module, ids: list[int], target: int | None = None, distractor: int | None = None
) -> tuple[dict[Key, torch.Tensor], dict[Key, torch.Tensor], float]:
    """(forward, gradients, objective) for one prompt, keys (location, layer).

    With a target the objective is target minus distractor logit at the last token, the final norm's
    scale held constant; without one, the mean next-token cross-entropy.
    """
    anatomy = ANATOMY[hf_model.config.model_type]
    body = _get(hf_model, anatomy.body)
    blocks = _get(body, anatomy.blocks)
    raw: dict[str, torch.Tensor] = {}
    handles = []

    def keep_out(name: str) -> Callable:
        def hook(_m: nn.Module, _inp: tuple, out: torch.Tensor | tuple) -> None:
            t = out[0] if isinstance(out, tuple) else out
            t.retain_grad()
            raw[name] = t

        return hook

    def keep_in(name: str) -> Callable:
        def hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            t = args[0] if args else kwargs["hidden_states"]
            if t.requires_grad:
                t.retain_grad()
            raw[name] = t

        return hook

    def on(module: nn.Module, name: str, inputs: bool = False) -> None:
        if inputs:
            handles.append(module.register_forward_pre_hook(keep_in(name), with_kwargs=True))
        else:
            handles.append(module.register_forward_hook(keep_out(name)))

    original_norm = _get(body, anatomy.final_norm)
    final_norm = _HeldScale(original_norm, anatomy) if target is not None else original_norm
    setattr(body, anatomy.final_norm, final_norm)
    for i, blk in enumerate(blocks):
        on(blk, f"{i}.in", inputs=True)
        on(blk, f"{i}.out")
        # ln1_in and ln2_in: the residual each block reads (its norm's input, or the block's own)
        on(_get(blk, anatomy.pre_attn_norm or anatomy.attention), f"{i}.ln1_in", inputs=True)
        on(_get(blk, anatomy.pre_mlp_norm or anatomy.mlp), f"{i}.ln2_in", inputs=True)
        if anatomy.pre_attn_norm and anatomy.pre_mlp_norm:
            on(_get(blk, anatomy.pre_attn_norm), f"{i}.ln1_out")
            on(_get(blk, anatomy.pre_mlp_norm), f"{i}.ln2_out")
        on(_get(blk, anatomy.post_attn_norm or anatomy.attention), f"{i}.attn_out")
        on(_get(blk, anatomy.post_mlp_norm or anatomy.mlp), f"{i}.mlp_out")
        for norm in (anatomy.post_attn_norm, anatomy.post_mlp_norm):
            if norm:
                on(_get(blk, norm), f"{i}.{norm}_in", inputs=True)
        on(_get(blk, anatomy.out_proj), f"{i}.vout", inputs=True)
        on(_get(blk, anatomy.pre_act), f"{i}.pre")
        on(_get(blk, anatomy.mlp_out), f"{i}.post", inputs=True)
    on(final_norm, "lnf_in", inputs=True)
    on(final_norm, "lnf_out")
    try:
        x = torch.tensor([ids])
        with _capturing(hf_model):
            logits = hf_model(x, use_cache=False).logits
            calls = list(_attention_calls)
        n = len(ids)
        if target is not None:
            objective = logits[0, n - 1, target] - (logits[0, n - 1, distractor] if distractor is not None else 0.0)
        else:
            objective = nn.functional.cross_entropy(logits[0, :-1], x[0, 1:])
        objective.backward()
    finally:
        for h in handles:
            h.remove()
        setattr(body, anatomy.final_norm, original_norm)
    assert len(calls) == len(blocks), "one attention call per block"

    out = _Values(anatomy)
    out.put(("resid.post_emb", None), raw["0.in"])
    for i, blk in enumerate(blocks):
        out.put(("resid.delta_attn", i), raw[f"{i}.attn_out"])
        out.put(("resid.delta_mlp", i), raw[f"{i}.mlp_out"])
        out.put(("resid.post_mlp", i), raw[f"{i}.out"])
        if anatomy.fused_gate_up:  # the gate: the first half of the fused projection's output
            out.put(("mlp.pre_act", i), raw[f"{i}.pre"], lambda z: z[..., : z.shape[-1] // 2])
        else:
            out.put(("mlp.pre_act", i), raw[f"{i}.pre"])
        out.put(("mlp.post_act", i), raw[f"{i}.post"])
        if anatomy.pre_attn_norm and anatomy.pre_mlp_norm:
            out.put(("resid.post_mlp_ln", i), raw[f"{i}.ln1_out"])
            out.put(("resid.post_attn_ln", i), raw[f"{i}.ln2_out"])
            attn_norm, mlp_norm = _get(blk, anatomy.pre_attn_norm), _get(blk, anatomy.pre_mlp_norm)
            out.put_scale(("attn_ln.scale", i), attn_norm, raw[f"{i}.ln1_in"], raw[f"{i}.ln1_out"])
            out.put_scale(("mlp_ln.scale", i), mlp_norm, raw[f"{i}.ln2_in"], raw[f"{i}.ln2_out"])
        for location, norm, output in (
            ("attn_post_ln.scale", anatomy.post_attn_norm, "attn_out"),
            ("mlp_post_ln.scale", anatomy.post_mlp_norm, "mlp_out"),
        ):
            if norm:
                out.put_scale((location, i), _get(blk, norm), raw[f"{i}.{norm}_in"], raw[f"{i}.{output}"])
        # The residual between the two blocks: the MLP norm's input when the blocks run in sequence; the
        # block input plus the attention output when they run in parallel (both read the block input).
        if raw[f"{i}.ln2_in"] is raw[f"{i}.ln1_in"]:
            out.fwd[("resid.post_attn", i)] = (raw[f"{i}.in"] + raw[f"{i}.attn_out"]).detach()[0]
            if raw[f"{i}.out"].grad is not None:
                out.grad[("resid.post_attn", i)] = raw[f"{i}.out"].grad[0]
        else:
            out.put(("resid.post_attn", i), raw[f"{i}.ln2_in"])
        post_norm = _get(blk, anatomy.post_attn_norm) if anatomy.post_attn_norm else None
        out.put_attention(i, calls[i], _get(blk, anatomy.out_proj), raw[f"{i}.vout"], post_norm)
    out.put_scale(("resid.ln_f.scale", None), original_norm, raw["lnf_in"], raw["lnf_out"])
    if target is not None:
        out.grad.pop(("resid.ln_f.scale", None))  # held constant: no gradient
    out.put(("resid.post_ln_f", None), raw["lnf_out"])
    out.fwd[("logits", None)] = logits.detach()[0]
    assert math.isfinite(float(objective.detach()))
    return out.fwd, out.grad, float(objective.detach())
