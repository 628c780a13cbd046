"""The hooked transformer: one torch forward for every family, every registry location a hook point.

Families differ only in ModelConfig's switches (norm with or without mean removal, learned or rotary
positions and the rotary's scaling, activation and gating of the MLP, grouped key/value heads, parallel
attention and MLP, norms after each block, embedding scale, attention scaling, soft-capping, sliding
windows); the forward reads those fields and never a family name, so every family exposes the same
locations with the same meaning. Weights are held in the registry's standard layout, which is also how
the weight tables store them.
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

from ingest.rotary import Rope, rotate  # noqa: E402
from warehouse.registry import WEIGHTS, ModelShape  # noqa: E402

Hook = Callable[[str, "int | None", torch.Tensor], torch.Tensor]


def no_hook(name: str, layer: int | None, tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@dataclass(frozen=True)
class ModelConfig:
    """The architecture, as the switches the forward reads. `family` is recorded, never branched on."""

    family: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    vocab_size: int
    n_ctx: int
    norm: str  # 'layernorm' (mean removed, bias) or 'rmsnorm'
    norm_eps: float
    activation: str  # a key of ACTIVATIONS
    gated_mlp: bool  # post_act = act(x W_gate + b_gate) * (x W_in + b_in)
    rope: Rope | None = None  # None: learned absolute positions
    parallel_residual: bool = False  # attention and MLP both read the block's input
    pre_block_norms: bool = True  # attention and the MLP read the residual normed (False: as it is, OLMo 2)
    post_block_norms: bool = False  # each block's output normed before it joins the residual
    # queries and keys RMS-normed before the rotary: 'head' over each head's channels (Qwen3), 'heads' over
    # all heads' channels together (OLMo 2); the gains are stored per head and channel either way
    qk_norm: str | None = None
    embedding_scale: float = 1.0
    attn_scale: float | None = None  # multiplies q . k before the softmax; None: d_head^-1/2
    attn_logit_softcap: float | None = None  # pre-softmax logits become cap * tanh(logit / cap)
    final_logit_softcap: float | None = None
    sliding_windows: tuple[int | None, ...] = ()  # per layer: keys q - window < k <= q; empty or None: all

    @property
    def sae(self) -> bool:
        """The switch of the locations a spliced sparse autoencoder writes (registry SAE_SWITCH): a model
        alone never has them; `ingest --sae` adds them."""
        return False

    def window(self, layer: int) -> int | None:
        return self.sliding_windows[layer] if self.sliding_windows else None

    @property
    def query_key_scale(self) -> float:
        """The factor applied to q and to k each: the square root of the logit scaling."""
        return math.sqrt(self.attn_scale if self.attn_scale is not None else self.d_head**-0.5)

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


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "silu": F.silu,
    "relu": F.relu,
}


class HookedTransformer:
    """A decoder-only transformer over standard-layout weights.

    `weights` maps (registry weight name, layer or None) to a tensor of the registry's shape; biases a
    family lacks are zeros, so the forward (and the views) need no family cases for them.
    """

    def __init__(self, config: ModelConfig, weights: dict[tuple[str, int | None], torch.Tensor]) -> None:
        self.config = config
        self.weights = weights
        self.device = torch.device("cpu")
        self._inv_freq = config.rope.frequencies() if config.rope is not None else None

    def to(self, device: torch.device | str) -> HookedTransformer:
        self.device = torch.device(device)
        self.weights = {k: v.to(self.device) for k, v in self.weights.items()}
        if self._inv_freq is not None:
            self._inv_freq = self._inv_freq.to(self.device)
        return self

    def w(self, name: str, layer: int | None = None) -> torch.Tensor:
        return self.weights[(name, layer)]

    def stored_weights(self, names: tuple[str, ...]) -> Iterator[tuple[str, int | None, torch.Tensor]]:
        for (name, layer), tensor in self.weights.items():
            if name in names:
                yield name, layer, tensor

    def _norm(
        self, x: torch.Tensor, where: str, layer: int | None, hold_scale: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(normed x, scale) for the norm `where` ('pre_attn', 'pre_mlp', 'post_attn', 'post_mlp', 'final')."""
        centred = x - x.mean(-1, keepdim=True) if self.config.norm == "layernorm" else x
        scale = torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + self.config.norm_eps)
        if hold_scale:
            scale = scale.detach()
        normed = centred / scale * self.w(f"layer_norm_gain.{where}", layer)
        bias = self.weights.get((f"layer_norm_bias.{where}", layer))  # post-block norms have none
        return (normed if bias is None else normed + bias), scale

    def _head_norm(self, x: torch.Tensor, which: str, layer: int) -> torch.Tensor:
        """RMSNorm of (batch, tokens, heads, channels) queries or keys (`which`), per head or over all heads."""
        axes = (-1,) if self.config.qk_norm == "head" else (-2, -1)
        scale = torch.sqrt(x.pow(2).mean(axes, keepdim=True) + self.config.norm_eps)
        return x / scale * self.w(f"layer_norm_gain.{which}", layer)

    def _block_input(self, x: torch.Tensor, block: str, layer: int, hook: Hook) -> torch.Tensor:
        """What block 'attn' or 'mlp' reads: the residual normed, or the residual itself in a model without
        norms before the blocks."""
        if not self.config.pre_block_norms:
            return x
        where, scale_name, normed_name = {
            "attn": ("pre_attn", "attn_ln.scale", "resid.post_mlp_ln"),
            "mlp": ("pre_mlp", "mlp_ln.scale", "resid.post_attn_ln"),
        }[block]
        normed, scale = self._norm(x, where, layer)
        hook(scale_name, layer, scale)
        return hook(normed_name, layer, normed)

    def forward(
        self, ids: torch.Tensor, lengths: torch.Tensor, hook: Hook = no_hook, hold_final_scale: bool = False
    ) -> torch.Tensor:
        """Logits for right-padded `ids` (batch, tokens); padded keys are masked, so no real value depends
        on padding."""
        cfg = self.config
        n_tokens = ids.shape[1]
        positions = torch.arange(n_tokens, device=ids.device)
        x = self.w("embedding")[ids]
        if cfg.embedding_scale != 1.0:
            x = x * torch.tensor(cfg.embedding_scale, dtype=x.dtype)  # the scale rounded to float32 first
        if cfg.rope is None:
            x = x + self.w("position_embedding")[positions][None]
        if torch.is_grad_enabled():
            x = x.detach().requires_grad_()  # the graph starts here: weights never need gradients
        x = hook("resid.post_emb", None, x)
        causal = positions[None, :] <= positions[:, None]  # (query, key)
        spans = [int(n) for n in lengths.tolist()]
        for layer in range(cfg.n_layers):
            allowed = causal
            if cfg.window(layer) is not None:
                allowed = allowed & (positions[None, :] > positions[:, None] - cfg.window(layer))
            delta_attn = self._attention(x, layer, spans, allowed, hook)
            x_attn = hook("resid.post_attn", layer, x + delta_attn)
            delta_mlp = self._mlp(x if cfg.parallel_residual else x_attn, layer, hook)
            x = hook("resid.post_mlp", layer, x_attn + delta_mlp)
        normed, scale = self._norm(x, "final", None, hold_scale=hold_final_scale)
        hook("resid.ln_f.scale", None, scale)
        normed = hook("resid.post_ln_f", None, normed)
        logits = normed @ self.w("unembedding")
        if cfg.final_logit_softcap is not None:
            logits = cfg.final_logit_softcap * torch.tanh(logits / cfg.final_logit_softcap)
        return hook("logits", None, logits)

    def _block_output(self, out: torch.Tensor, block: str, layer: int, hook: Hook) -> torch.Tensor:
        """What block 'attn' or 'mlp' adds to the residual: its output, normed first where the model norms it."""
        if self.config.post_block_norms:
            out, scale = self._norm(out, f"post_{block}", layer)
            hook(f"{block}_post_ln.scale", layer, scale)
        return hook(f"resid.delta_{block}", layer, out)

    def _attention(
        self, x: torch.Tensor, layer: int, spans: list[int], allowed: torch.Tensor, hook: Hook
    ) -> torch.Tensor:
        cfg = self.config
        normed = self._block_input(x, "attn", layer, hook)
        q = torch.einsum("btd,hdc->bthc", normed, self.w("attn.to_query", layer)) + self.w("attn.query_bias", layer)
        k = torch.einsum("btd,hdc->bthc", normed, self.w("attn.to_key", layer)) + self.w("attn.key_bias", layer)
        v = torch.einsum("btd,hdc->bthc", normed, self.w("attn.to_value", layer)) + self.w("attn.value_bias", layer)
        if cfg.qk_norm is not None:
            q, k = self._head_norm(q, "query", layer), self._head_norm(k, "key", layer)
        if cfg.rope is not None:
            q, k = rotate(q, cfg.rope, self._inv_freq), rotate(k, cfg.rope, self._inv_freq)
        root = cfg.query_key_scale
        q = hook("attn.q", layer, q * root)
        k = hook("attn.k", layer, k * root)
        v = hook("attn.v", layer, v)
        group = cfg.n_heads // cfg.n_kv_heads
        k_per_head = k.repeat_interleave(group, dim=2)
        v_per_head = v.repeat_interleave(group, dim=2)
        n_tokens = x.shape[1]
        cap = cfg.attn_logit_softcap

        def scores(b: int, n: int) -> torch.Tensor:
            s = torch.einsum("qhc,khc->qkh", q[b, :n], k_per_head[b, :n])
            return cap * torch.tanh(s / cap) if cap is not None else s

        # Batch invariance, part 2: torch's bmm picks its kernel by matrix size, so the attention core runs
        # per prompt on its real length; padded positions stay zero and no padding enters any reduction.
        logits = hook("attn.qk_logits", layer, _per_prompt(spans, n_tokens, 2, scores))
        probs = hook(
            "attn.qk_probs",
            layer,
            _per_prompt(
                spans,
                n_tokens,
                2,
                lambda b, n: torch.softmax(
                    logits[b, :n, :n].contiguous().masked_fill(~allowed[:n, :n, None], -math.inf), dim=1
                ),
            ),
        )
        mixed = hook(
            "attn.v_out",
            layer,
            _per_prompt(
                spans,
                n_tokens,
                1,
                lambda b, n: torch.einsum("qkh,khc->qhc", probs[b, :n, :n].contiguous(), v_per_head[b, :n]),
            ),
        )
        w_o = self.w("attn.to_residual", layer)
        # A post-block norm multiplies each head's write by its gain and divides it by the scale at the token
        # the write lands on: the gain belongs to the write, the scale (of the query token) to the views.
        w_o_written = w_o * self.w("layer_norm_gain.post_attn", layer) if cfg.post_block_norms else w_o
        with torch.no_grad():  # per prompt too: for one token these are small enough for bmm's other kernel
            for name, per_token in (("attn.v_write_norm", v_per_head), ("attn.v_out_write_norm", mixed)):
                norms = _per_prompt(
                    spans, n_tokens, 1, lambda b, n, t=per_token: torch.einsum("khc,hcd->khd", t[b, :n], w_o_written)
                ).norm(dim=-1)
                hook(name, layer, norms)
        out = torch.einsum("bqhc,hcd->bqd", mixed, w_o) + self.w("attn.residual_bias", layer)
        return self._block_output(out, "attn", layer, hook)

    def _mlp(self, x: torch.Tensor, layer: int, hook: Hook) -> torch.Tensor:
        cfg = self.config
        normed = self._block_input(x, "mlp", layer, hook)
        hidden = normed @ self.w("mlp.to_hidden", layer) + self.w("mlp.hidden_bias", layer)
        act = ACTIVATIONS[cfg.activation]
        if cfg.gated_mlp:
            pre = hook("mlp.pre_act", layer, normed @ self.w("mlp.to_gate", layer) + self.w("mlp.gate_bias", layer))
            post = act(pre) * hidden
        else:
            pre = hook("mlp.pre_act", layer, hidden)
            post = act(pre)
        post = hook("mlp.post_act", layer, post)
        out = post @ self.w("mlp.to_residual", layer) + self.w("mlp.residual_bias", layer)
        return self._block_output(out, "mlp", layer, hook)


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
    if len(parts) == 1 and spans[0] == n_tokens:  # a view: a long prompt's token-pair tensors are not copied
        return parts[0].unsqueeze(0)
    if all(n == n_tokens for n in spans):
        return torch.stack(parts)
    tail = parts[0].shape[token_axes:]
    out = parts[0].new_zeros((len(parts), *(n_tokens,) * token_axes, *tail))
    for b, (n, part) in enumerate(zip(spans, parts, strict=True)):
        out[(b, *(slice(0, n),) * token_axes)] = part
    return out


def required_weights(config: ModelConfig) -> set[tuple[str, int | None]]:
    """Every (weight, layer) the forward reads under this config."""
    # RMSNorm models carry zero norm biases, so the stored weights (and the views) have one shape
    names = {"embedding", "unembedding", "layer_norm_gain.final", "layer_norm_bias.final"}
    names |= {"position_embedding"} if config.rope is None else set()
    per_layer = set()
    if config.pre_block_norms:
        per_layer |= {f"layer_norm_{p}.pre_{b}" for p in ("gain", "bias") for b in ("attn", "mlp")}
    per_layer |= {f"attn.to_{x}" for x in ("query", "key", "value", "residual")}
    per_layer |= {f"attn.{x}_bias" for x in ("query", "key", "value", "residual")}
    per_layer |= {"mlp.to_hidden", "mlp.hidden_bias", "mlp.to_residual", "mlp.residual_bias"}
    per_layer |= {"mlp.to_gate", "mlp.gate_bias"} if config.gated_mlp else set()
    per_layer |= {"layer_norm_gain.post_attn", "layer_norm_gain.post_mlp"} if config.post_block_norms else set()
    per_layer |= {"layer_norm_gain.query", "layer_norm_gain.key"} if config.qk_norm is not None else set()
    return {(n, None) for n in names} | {(n, i) for n in per_layer for i in range(config.n_layers)}


def check_weights(config: ModelConfig, weights: dict[tuple[str, int | None], torch.Tensor]) -> None:
    """Fail early, naming the tensor, when a checkpoint does not fill exactly the weights the forward reads,
    in the registry's shapes."""
    required = required_weights(config)
    for missing in sorted(required - set(weights), key=str):
        raise ValueError(f"weight {missing[0]} (layer {missing[1]}) is missing")
    for extra in sorted(set(weights) - required, key=str):
        raise ValueError(f"weight {extra[0]} (layer {extra[1]}) would not be used by this config")
    shape = config.shape
    for (name, layer), tensor in weights.items():
        expected = tuple(shape.size(d) for d in WEIGHTS[name].shape)
        if tuple(tensor.shape) != expected:
            raise ValueError(f"weight {name} (layer {layer}) has shape {tuple(tensor.shape)}, expected {expected}")
