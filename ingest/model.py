"""The hooked transformer: one torch forward for both families, every registry location a hook point.

GPT-2 and Llama differ in four switches (norm with or without mean removal and bias, learned or rotary
positions, GELU or gated SiLU MLP, grouped key/value heads); everything else, and every hook, is shared,
so both families expose the same locations with the same meaning. Weights are held in the registry's
standard layout, which is also how the weight tables store them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

# Batch invariance, part 1: MKL's threaded sgemm splits the inner dimension across threads for some row
# counts (and takes a gemv path for one row), so a token's values would depend on how many other tokens
# share its matmul. Strict conditional numerical reproducibility makes every row's result independent
# of the row count. MKL reads this once, at its first call: it must be set before any matmul runs.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from warehouse.registry import WEIGHTS, ModelShape  # noqa: E402

Hook = Callable[[str, "int | None", torch.Tensor], torch.Tensor]


def no_hook(name: str, layer: int | None, tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@dataclass(frozen=True)
class ModelConfig:
    family: str  # 'gpt2' or 'llama'
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    vocab_size: int
    n_ctx: int
    norm_eps: float
    rope_theta: float | None = None  # None: learned absolute positions

    @property
    def norm(self) -> str:
        return "layernorm" if self.family == "gpt2" else "rmsnorm"

    @property
    def shape(self) -> ModelShape:
        return ModelShape(
            self.n_layers,
            self.d_model,
            self.n_heads,
            self.n_kv_heads,
            self.d_head,
            self.d_mlp,
            self.vocab_size,
            self.n_ctx,
        )

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class HookedTransformer:
    """A pre-norm decoder-only transformer over standard-layout weights.

    `weights` maps (registry weight name, layer or None) to a tensor of the registry's shape; biases a
    family lacks are zeros, so the forward (and the views) need no family cases for them.
    """

    def __init__(self, config: ModelConfig, weights: dict[tuple[str, int | None], torch.Tensor]) -> None:
        self.config = config
        self.weights = weights
        self.device = torch.device("cpu")

    def to(self, device: torch.device | str) -> HookedTransformer:
        self.device = torch.device(device)
        self.weights = {k: v.to(self.device) for k, v in self.weights.items()}
        return self

    def w(self, name: str, layer: int | None = None) -> torch.Tensor:
        return self.weights[(name, layer)]

    def stored_weights(self, names: tuple[str, ...]) -> Iterator[tuple[str, int | None, torch.Tensor]]:
        for (name, layer), tensor in self.weights.items():
            if name in names:
                yield name, layer, tensor

    def _norm(
        self, x: torch.Tensor, gain: torch.Tensor, bias: torch.Tensor, hold_scale: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        centred = x - x.mean(-1, keepdim=True) if self.config.norm == "layernorm" else x
        scale = torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + self.config.norm_eps)
        if hold_scale:
            scale = scale.detach()
        return centred / scale * gain + bias, scale

    def _rotary(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate-half rotary embedding over (batch, tokens, heads, channels)."""
        assert self.config.rope_theta is not None
        dh = self.config.d_head
        inv_freq = 1.0 / (self.config.rope_theta ** (torch.arange(0, dh, 2, device=x.device, dtype=torch.float32) / dh))
        angles = torch.arange(x.shape[1], device=x.device, dtype=torch.float32)[:, None] * inv_freq[None, :]
        angles = torch.cat([angles, angles], dim=-1)[None, :, None, :]
        half = dh // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * angles.cos() + rotated * angles.sin()

    def forward(
        self, ids: torch.Tensor, lengths: torch.Tensor, hook: Hook = no_hook, hold_final_scale: bool = False
    ) -> torch.Tensor:
        """Logits for right-padded `ids` (batch, tokens); padded keys are masked, so no real value depends
        on padding."""
        cfg = self.config
        n_tokens = ids.shape[1]
        positions = torch.arange(n_tokens, device=ids.device)
        x = self.w("embedding")[ids]
        if cfg.rope_theta is None:
            x = x + self.w("position_embedding")[positions][None]
        if torch.is_grad_enabled():
            x = x.detach().requires_grad_()  # the graph starts here: weights never need gradients
        x = hook("resid.post_emb", None, x)
        causal = positions[None, :] <= positions[:, None]  # (query, key)
        group = cfg.n_heads // cfg.n_kv_heads
        for layer in range(cfg.n_layers):
            x = self._attention(x, layer, lengths, causal, group, hook)
            x = self._mlp(x, layer, hook)
        normed, scale = self._norm(
            x, self.w("layer_norm_gain.final"), self.w("layer_norm_bias.final"), hold_scale=hold_final_scale
        )
        hook("resid.ln_f.scale", None, scale)
        normed = hook("resid.post_ln_f", None, normed)
        logits = normed @ self.w("unembedding")
        return hook("logits", None, logits)

    def _attention(
        self, x: torch.Tensor, layer: int, lengths: torch.Tensor, causal: torch.Tensor, group: int, hook: Hook
    ) -> torch.Tensor:
        cfg = self.config
        normed, scale = self._norm(
            x, self.w("layer_norm_gain.pre_attn", layer), self.w("layer_norm_bias.pre_attn", layer)
        )
        hook("attn_ln.scale", layer, scale)
        normed = hook("resid.post_mlp_ln", layer, normed)
        q = torch.einsum("btd,hdc->bthc", normed, self.w("attn.to_query", layer)) + self.w("attn.query_bias", layer)
        k = torch.einsum("btd,hdc->bthc", normed, self.w("attn.to_key", layer)) + self.w("attn.key_bias", layer)
        v = torch.einsum("btd,hdc->bthc", normed, self.w("attn.to_value", layer)) + self.w("attn.value_bias", layer)
        if cfg.rope_theta is not None:
            q, k = self._rotary(q), self._rotary(k)
        quarter = cfg.d_head**-0.25
        q = hook("attn.q", layer, q * quarter)
        k = hook("attn.k", layer, k * quarter)
        v = hook("attn.v", layer, v)
        k_per_head = k.repeat_interleave(group, dim=2)
        v_per_head = v.repeat_interleave(group, dim=2)
        # Batch invariance, part 2: torch's bmm picks its kernel by matrix size, so the attention core runs
        # per prompt on its real length; padded positions stay zero and no padding enters any reduction.
        spans = [int(n) for n in lengths.tolist()]
        logits = hook(
            "attn.qk_logits",
            layer,
            _per_prompt(spans, x.shape[1], 2, lambda b, n: torch.einsum("qhc,khc->qkh", q[b, :n], k_per_head[b, :n])),
        )
        probs = hook(
            "attn.qk_probs",
            layer,
            _per_prompt(
                spans,
                x.shape[1],
                2,
                lambda b, n: torch.softmax(
                    logits[b, :n, :n].contiguous().masked_fill(~causal[:n, :n, None], -math.inf), dim=1
                ),
            ),
        )
        mixed = hook(
            "attn.v_out",
            layer,
            _per_prompt(
                spans,
                x.shape[1],
                1,
                lambda b, n: torch.einsum("qkh,khc->qhc", probs[b, :n, :n].contiguous(), v_per_head[b, :n]),
            ),
        )
        w_o = self.w("attn.to_residual", layer)
        with torch.no_grad():  # per prompt too: for one token these are small enough for bmm's other kernel
            for name, per_token in (("attn.v_write_norm", v_per_head), ("attn.v_out_write_norm", mixed)):
                norms = _per_prompt(
                    spans, x.shape[1], 1, lambda b, n, t=per_token: torch.einsum("khc,hcd->khd", t[b, :n], w_o)
                ).norm(dim=-1)
                hook(name, layer, norms)
        delta = torch.einsum("bqhc,hcd->bqd", mixed, w_o) + self.w("attn.residual_bias", layer)
        delta = hook("resid.delta_attn", layer, delta)
        return hook("resid.post_attn", layer, x + delta)

    def _mlp(self, x: torch.Tensor, layer: int, hook: Hook) -> torch.Tensor:
        normed, scale = self._norm(
            x, self.w("layer_norm_gain.pre_mlp", layer), self.w("layer_norm_bias.pre_mlp", layer)
        )
        hook("mlp_ln.scale", layer, scale)
        normed = hook("resid.post_attn_ln", layer, normed)
        hidden = normed @ self.w("mlp.to_hidden", layer) + self.w("mlp.hidden_bias", layer)
        if self.config.family == "gpt2":
            pre = hook("mlp.pre_act", layer, hidden)
            post = F.gelu(pre, approximate="tanh")
        else:
            pre = hook("mlp.pre_act", layer, normed @ self.w("mlp.to_gate", layer))
            post = F.silu(pre) * hidden
        post = hook("mlp.post_act", layer, post)
        delta = hook(
            "resid.delta_mlp", layer, post @ self.w("mlp.to_residual", layer) + self.w("mlp.residual_bias", layer)
        )
        return hook("resid.post_mlp", layer, x + delta)


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands on a contiguous gradient: the gradient reaching a per-prompt part is
    a slice of the batch's gradient, and its memory layout (which depends on the batch) can steer the
    backward kernels into another summation order."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def _per_prompt(
    spans: list[int], n_tokens: int, token_axes: int, one: Callable[[int, int], torch.Tensor]
) -> torch.Tensor:
    """Stack per-prompt results `one(b, n)`, whose first `token_axes` axes have length n, zero-padded to
    n_tokens. Padding is a copy, so the gradients that flow back to each part are exact too."""
    parts = [_ContiguousGrad.apply(one(b, n)) for b, n in enumerate(spans)]
    if all(n == n_tokens for n in spans):
        return torch.stack(parts)
    tail = parts[0].shape[token_axes:]
    out = parts[0].new_zeros((len(parts), *(n_tokens,) * token_axes, *tail))
    for b, (n, part) in enumerate(zip(spans, parts, strict=True)):
        out[(b, *(slice(0, n),) * token_axes)] = part
    return out


def check_weights(config: ModelConfig, weights: dict[tuple[str, int | None], torch.Tensor]) -> None:
    """Fail early, naming the tensor, when a checkpoint does not fill the registry's shapes."""
    shape = config.shape
    for (name, layer), tensor in weights.items():
        expected = tuple(shape.size(d) for d in WEIGHTS[name].shape)
        if tuple(tensor.shape) != expected:
            raise ValueError(f"weight {name} (layer {layer}) has shape {tuple(tensor.shape)}, expected {expected}")
