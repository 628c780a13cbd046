"""Derived scalars computed directly in torch from captured tensors and weights: the views' oracle.

Written from DERIVED_SCALARS.md's formulas, independently of the SQL. Keys are
(token, token2, layer, head, node_index) with None where a column is NULL, as the views return them.
"""

from __future__ import annotations

import torch

from ingest.capture import CaptureSpec, Recorder
from ingest.model import HookedTransformer
from ingest.objective import per_prompt_objective
from warehouse.registry import LOCATIONS, PassType

Key = tuple[int | None, int | None, int | None, int | None, int]
EVERYTHING = CaptureSpec({name: (PassType.FORWARD, PassType.BACKWARD) for name in LOCATIONS})


def capture(model: HookedTransformer, ids: list[int], target: int, distractor: int | None):  # noqa: ANN201
    """Forward values and gradients of one prompt, batch axis dropped, plus the objective."""
    rec = Recorder(EVERYTHING, backward=True)
    x = torch.tensor([ids])
    lengths = torch.tensor([len(ids)])
    logits = model.forward(x, lengths, rec, hold_final_scale=True)
    objective = per_prompt_objective(logits, x, lengths, [target], [distractor])
    objective.sum().backward()
    fwd = {k: v[0].double() for k, v in rec.forward.items()}
    grad = {k: v[0].double() for k, v in rec.gradients().items()}
    return fwd, grad, float(objective[0].detach()), logits.detach()[0].double()


def expected_scalars(
    model: HookedTransformer, ids: list[int], target: int, distractor: int | None
) -> dict[str, dict[Key, float]]:
    cfg = model.config
    fwd, grad, objective, logits = capture(model, ids, target, distractor)
    n, last = len(ids), len(ids) - 1

    def w(name: str, layer: int | None = None) -> torch.Tensor:
        return model.w(name, layer).double()

    u = w("layer_norm_gain.final") * (
        w("unembedding")[:, target] - (w("unembedding")[:, distractor] if distractor is not None else 0.0)
    )
    if cfg.norm == "layernorm":
        u = u - u.mean()
    g = u / fwd[("resid.ln_f.scale", None)][last, 0]
    group = cfg.n_heads // cfg.n_kv_heads
    out: dict[str, dict[Key, float]] = {}

    def put(dst: str, key: Key, value: torch.Tensor | float) -> None:
        out.setdefault(dst, {})[key] = float(value)

    emb = fwd[("resid.post_emb", None)]
    for t in range(n):
        put("always_one", (t, None, None, None, 0), 1.0)
        put("resid_post_embedding_norm", (t, None, None, None, 0), emb[t].norm())
        put("token_attribution", (t, None, None, None, 0), emb[t] @ grad[("resid.post_emb", None)][t])
    put("resid_post_embedding_proj_to_final_residual_grad", (last, None, None, None, 0), emb[last] @ g)
    put(
        "logit_diff",
        (last, None, None, None, 0),
        logits[last, target] - (logits[last, distractor] if distractor is not None else 0.0),
    )
    put("loss", (last, None, None, None, 0), objective)
    for d in range(cfg.d_model):
        put("final_residual_grad", (last, None, None, None, d), g[d])

    for layer in range(cfg.n_layers):
        a = fwd[("mlp.post_act", layer)]
        da = grad[("mlp.post_act", layer)]
        w_out = w("mlp.to_residual", layer)
        row_norm = w_out.norm(dim=1)
        direct = a[last] * (w_out @ g)
        rebuilt = a @ w_out
        for t in range(n):
            for i in range(cfg.d_mlp):
                put("mlp_write_norm", (t, None, layer, None, i), a[t, i] * row_norm[i])
                put("mlp_act_times_grad", (t, None, layer, None, i), a[t, i] * da[t, i])
            for d in range(cfg.d_model):
                put("resid_delta_mlp_from_mlp_post_act", (t, None, layer, None, d), rebuilt[t, d])
        for i in range(cfg.d_mlp):
            put("mlp_write_to_final_residual_grad", (last, None, layer, None, i), direct[i])

        p = fwd[("attn.qk_probs", layer)]
        dp = grad[("attn.qk_probs", layer)]
        v = fwd[("attn.v", layer)].repeat_interleave(group, dim=1)
        w_o = w("attn.to_residual", layer)
        value_write = torch.einsum("khc,hcd->khd", v, w_o)  # write per unit probability
        summed_write = torch.einsum("qhc,hcd->qhd", fwd[("attn.v_out", layer)], w_o)
        for q in range(n):
            for h in range(cfg.n_heads):
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
        for h in range(cfg.n_heads):
            effects = p[last, :, h] * (value_write[:, h] @ g)
            put("attn_write_to_final_residual_grad_per_sequence_token", (last, None, layer, None, h), effects.sum())
            for k in range(n):
                put("unflattened_attn_write_to_final_residual_grad", (last, k, layer, None, h), effects[k])
                put("attn_write_to_final_residual_grad", (last * (last + 1) // 2 + k, None, layer, None, h), effects[k])

        for dst, loc in (("resid_post_mlp", "resid.post_mlp"), ("resid_post_attn", "resid.post_attn")):
            x = fwd[(loc, layer)]
            for t in range(n):
                put(f"{dst}_norm", (t, None, layer, None, 0), x[t].norm())
            put(f"{dst}_proj_to_final_residual_grad", (last, None, layer, None, 0), x[last] @ g)
        for block, loc in (("mlp", "resid.delta_mlp"), ("attn", "resid.delta_attn")):
            x = fwd[(loc, layer)]
            for t in range(n):
                put(f"{block}_layer_write_norm", (t, None, layer, None, 0), x[t].norm())
            put(f"{block}_layer_write_to_final_residual_grad", (last, None, layer, None, 0), x[last] @ g)
    return out
