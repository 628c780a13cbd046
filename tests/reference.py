"""An independent capture: Hugging Face transformers' own GPT-2 and Llama, read through module hooks.

Returns every location in the registry's layout (tokens first, heads, then channels) for one unpadded
prompt, forward values and autograd gradients, so tests can compare the hooked model against it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

Key = tuple[str, int | None]


class HeldScaleNorm(nn.Module):
    """The final norm with its scale detached: the reference objective's convention."""

    def __init__(self, norm: nn.Module, centred: bool) -> None:
        super().__init__()
        self.norm, self.centred = norm, centred
        self.eps = getattr(norm, "eps", None) or getattr(norm, "variance_epsilon", 1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(-1, keepdim=True) if self.centred else x
        scale = torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + self.eps).detach()
        bias = getattr(self.norm, "bias", None)
        out = centred / scale * self.norm.weight
        return out + bias if bias is not None else out


def _scale(x: torch.Tensor, eps: float, centred: bool) -> torch.Tensor:
    x = x - x.mean(-1, keepdim=True) if centred else x
    return torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def hf_capture(
    hf_model: nn.Module, ids: list[int], target: int | None = None, distractor: int | None = None
) -> tuple[dict[Key, torch.Tensor], dict[Key, torch.Tensor], float]:
    """(forward, gradients, objective) for one prompt, keys (location, layer)."""
    family = hf_model.config.model_type
    gpt2 = family == "gpt2"
    body = hf_model.transformer if gpt2 else hf_model.model
    blocks = body.h if gpt2 else body.layers
    cfg = hf_model.config
    n_heads = cfg.n_head if gpt2 else cfg.num_attention_heads
    n_kv = n_heads if gpt2 else cfg.num_key_value_heads
    d_model = cfg.n_embd if gpt2 else cfg.hidden_size
    dh = d_model // n_heads if gpt2 else getattr(cfg, "head_dim", None) or d_model // n_heads
    eps = cfg.layer_norm_epsilon if gpt2 else cfg.rms_norm_eps
    quarter = dh**-0.25
    raw: dict[str, torch.Tensor] = {}
    handles = []

    def keep_out(name: str):  # noqa: ANN202
        def hook(_m: nn.Module, _inp: tuple, out: torch.Tensor | tuple) -> None:
            t = out[0] if isinstance(out, tuple) else out
            t.retain_grad()
            raw[name] = t

        return hook

    def keep_in(name: str):  # noqa: ANN202
        def hook(_m: nn.Module, inp: tuple) -> None:
            inp[0].retain_grad()
            raw[name] = inp[0]

        return hook

    final_norm_name = "ln_f" if gpt2 else "norm"
    original_norm = getattr(body, final_norm_name)
    if target is not None:
        setattr(body, final_norm_name, HeldScaleNorm(original_norm, centred=gpt2))
    final_norm = getattr(body, final_norm_name)
    for i, blk in enumerate(blocks):
        ln1, ln2 = (blk.ln_1, blk.ln_2) if gpt2 else (blk.input_layernorm, blk.post_attention_layernorm)
        handles += [
            ln1.register_forward_pre_hook(keep_in(f"{i}.ln1_in")),
            ln1.register_forward_hook(keep_out(f"{i}.ln1_out")),
            ln2.register_forward_pre_hook(keep_in(f"{i}.ln2_in")),
            ln2.register_forward_hook(keep_out(f"{i}.ln2_out")),
            blk.register_forward_hook(keep_out(f"{i}.block_out")),
            blk.mlp.register_forward_hook(keep_out(f"{i}.mlp_out")),
        ]
        if gpt2:
            handles += [
                blk.attn.c_attn.register_forward_hook(keep_out(f"{i}.qkv")),
                blk.attn.c_proj.register_forward_pre_hook(keep_in(f"{i}.vout")),
                blk.attn.c_proj.register_forward_hook(keep_out(f"{i}.attn_out")),
                blk.mlp.c_fc.register_forward_hook(keep_out(f"{i}.pre")),
                blk.mlp.c_proj.register_forward_pre_hook(keep_in(f"{i}.post")),
            ]
        else:
            att = blk.self_attn
            handles += [
                att.q_proj.register_forward_hook(keep_out(f"{i}.q")),
                att.k_proj.register_forward_hook(keep_out(f"{i}.k")),
                att.v_proj.register_forward_hook(keep_out(f"{i}.v")),
                att.o_proj.register_forward_pre_hook(keep_in(f"{i}.vout")),
                att.o_proj.register_forward_hook(keep_out(f"{i}.attn_out")),
                blk.mlp.gate_proj.register_forward_hook(keep_out(f"{i}.pre")),
                blk.mlp.down_proj.register_forward_pre_hook(keep_in(f"{i}.post")),
            ]
    handles += [
        final_norm.register_forward_pre_hook(keep_in("lnf_in")),
        final_norm.register_forward_hook(keep_out("lnf_out")),
    ]
    try:
        x = torch.tensor([ids])
        out = hf_model(x, output_attentions=True, use_cache=False)
        logits = out.logits
        for att in out.attentions:
            att.retain_grad()
        n = len(ids)
        if target is not None:
            objective = logits[0, n - 1, target] - (logits[0, n - 1, distractor] if distractor is not None else 0.0)
        else:
            objective = nn.functional.cross_entropy(logits[0, :-1], x[0, 1:])
        objective.backward()
    finally:
        for h in handles:
            h.remove()
        setattr(body, final_norm_name, original_norm)

    fwd: dict[Key, torch.Tensor] = {}
    grad: dict[Key, torch.Tensor] = {}

    def put(key: Key, t: torch.Tensor, transform=lambda z: z) -> None:  # noqa: ANN001
        fwd[key] = transform(t.detach()[0])
        if t.grad is not None:
            grad[key] = transform(t.grad[0])

    put(("resid.post_emb", None), raw["0.ln1_in"])
    rotary = None if gpt2 else body.rotary_emb
    for i in range(len(blocks)):
        put(("resid.post_mlp_ln", i), raw[f"{i}.ln1_out"])
        put(("resid.post_attn", i), raw[f"{i}.ln2_in"])
        put(("resid.post_attn_ln", i), raw[f"{i}.ln2_out"])
        put(("resid.delta_attn", i), raw[f"{i}.attn_out"])
        put(("resid.delta_mlp", i), raw[f"{i}.mlp_out"])
        put(("resid.post_mlp", i), raw[f"{i}.block_out"])
        put(("mlp.pre_act", i), raw[f"{i}.pre"])
        put(("mlp.post_act", i), raw[f"{i}.post"])
        put(("attn.v_out", i), raw[f"{i}.vout"], lambda z: z.reshape(z.shape[0], n_heads, dh))
        fwd[("attn_ln.scale", i)] = _scale(raw[f"{i}.ln1_in"].detach()[0], eps, gpt2)
        fwd[("mlp_ln.scale", i)] = _scale(raw[f"{i}.ln2_in"].detach()[0], eps, gpt2)
        probs = out.attentions[i]  # (1, H, q, k)
        put(("attn.qk_probs", i), probs, lambda z: z.permute(1, 2, 0))
        if gpt2:
            qkv = raw[f"{i}.qkv"]
            for j, name in enumerate(("attn.q", "attn.k", "attn.v")):
                part = qkv[..., j * d_model : (j + 1) * d_model]
                scale = 1.0 if name == "attn.v" else quarter
                fwd[(name, i)] = part.detach()[0].reshape(n, n_heads, dh) * scale
                grad[(name, i)] = qkv.grad[0][..., j * d_model : (j + 1) * d_model].reshape(n, n_heads, dh) / scale
            q, k = fwd[("attn.q", i)], fwd[("attn.k", i)]
            w_o = hf_model.transformer.h[i].attn.c_proj.weight.detach().reshape(n_heads, dh, d_model)
        else:
            q = raw[f"{i}.q"].detach().reshape(1, n, n_heads, dh).transpose(1, 2)
            k = raw[f"{i}.k"].detach().reshape(1, n, n_kv, dh).transpose(1, 2)
            cos, sin = rotary(q, torch.arange(n)[None])
            from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            q = q[0].transpose(0, 1) * quarter
            k = k[0].transpose(0, 1) * quarter
            fwd[("attn.q", i)], fwd[("attn.k", i)] = q, k
            put(("attn.v", i), raw[f"{i}.v"], lambda z: z.reshape(n, n_kv, dh))
            w_o = blocks[i].self_attn.o_proj.weight.detach().T.reshape(n_heads, dh, d_model)
        group = n_heads // n_kv
        k_full = k.repeat_interleave(group, dim=1)
        v_full = fwd[("attn.v", i)].repeat_interleave(group, dim=1)
        fwd[("attn.qk_logits", i)] = torch.einsum("qhc,khc->qkh", q, k_full)
        fwd[("attn.v_write_norm", i)] = torch.einsum("khc,hcd->khd", v_full, w_o).norm(dim=-1)
        fwd[("attn.v_out_write_norm", i)] = torch.einsum("qhc,hcd->qhd", fwd[("attn.v_out", i)], w_o).norm(dim=-1)
    fwd[("resid.ln_f.scale", None)] = _scale(raw["lnf_in"].detach()[0], eps, gpt2)
    put(("resid.post_ln_f", None), raw["lnf_out"])
    fwd[("logits", None)] = logits.detach()[0]
    assert math.isfinite(float(objective.detach()))
    return fwd, grad, float(objective.detach())
