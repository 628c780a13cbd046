"""Weight-only factor tables, computed from the model's tensors at ingest (float64, exact to float32).

The views join these instead of multiplying weight rows per query: `mlp_out_norms` once per model and
`direction_factors` once per target or distractor token (definitions in warehouse/schema.sql). The SQL
macro `weight_factors(t, d, recompute)` (queries/support/10_weight_factors.sql) computes the same factors
from the stored weight rows for a token of a pair given at query time that this table lacks; tests hold the
two equal.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

FACTOR_WEIGHTS: tuple[str, ...] = (
    "unembedding",
    "layer_norm_gain.final",
    "layer_norm_bias.final",
    "layer_norm_gain.post_attn",
    "layer_norm_gain.post_mlp",
    "mlp.to_residual",
    "attn.to_residual",
    "attn.residual_bias",
    "mlp.residual_bias",
)

Weights = dict[tuple[str, int | None], torch.Tensor]


def _layers(weights: Weights, name: str) -> list[tuple[int, torch.Tensor]]:
    return sorted((layer, t) for (n, layer), t in weights.items() if n == name and layer is not None)


def _written(weights: Weights, block: str, layer: int) -> torch.Tensor | None:
    """The gain of the norm after block 'attn' or 'mlp' at `layer` (float64), None where the model has none:
    what a node's write is multiplied by before it joins the residual (its scale divides it per token)."""
    gain = weights.get((f"layer_norm_gain.post_{block}", layer))
    return None if gain is None else gain.double()


def mlp_out_norms(weights: Weights) -> pa.Table:
    """||gain_post[l] * W_out[l][i,:]|| per layer and neuron (gain_post = 1 without a norm after the MLP):
    columns layer, node_index, value (float32)."""
    parts = []
    for layer, w in _layers(weights, "mlp.to_residual"):
        gain = _written(weights, "mlp", layer)
        rows = w.double() if gain is None else w.double() * gain
        parts.append((layer, torch.linalg.vector_norm(rows, dim=1)))
    return pa.table(
        {
            "layer": pa.array(np.concatenate([np.full(len(v), layer) for layer, v in parts]).astype(np.int16)),
            "node_index": pa.array(np.concatenate([np.arange(len(v)) for _, v in parts]).astype(np.int32)),
            "value": pa.array(np.concatenate([v.float().cpu().numpy() for _, v in parts])),
        }
    )


def direction_factors(weights: Weights, token_id: int, layernorm: bool) -> pa.Table:
    """Every factor of token v = token_id: u = P(gain_f * W_U[:, v]) ('residual', node_index = channel),
    W_out[l][i,:] . u_mlp[l] ('mlp'), W_O[l][h][c,:] . u_attn[l] ('attn'), b_O[l] . u_attn[l] ('attn_bias'),
    b_out[l] . u_mlp[l] ('mlp_bias') and bias_f . W_U[:, v] ('final_bias'), where u_attn[l] and u_mlp[l] are
    u times the gain of the norm after that block (u itself without one). P removes the mean over channels
    for LayerNorm models (docs/DERIVED_SCALARS.md, g[T]). Columns token_id, kind, layer, head, node_index, value
    (float64)."""
    column = weights[("unembedding", None)][:, token_id].double()
    u = weights[("layer_norm_gain.final", None)].double() * column
    if layernorm:
        u = u - u.mean()

    def seen_by(block: str, layer: int) -> torch.Tensor:
        gain = _written(weights, block, layer)
        return u if gain is None else gain * u

    # 'attn' rows first: they have a value in every column (see fact_rows in ingest/worker.py for why).
    rows: list[tuple[str, int | None, int | None, np.ndarray]] = []
    for layer, w in _layers(weights, "attn.to_residual"):
        for head, per_head in enumerate(w.double() @ seen_by("attn", layer)):
            rows.append(("attn", layer, head, per_head.cpu().numpy()))
    for layer, w in _layers(weights, "mlp.to_residual"):
        rows.append(("mlp", layer, None, (w.double() @ seen_by("mlp", layer)).cpu().numpy()))
    rows.append(("residual", None, None, u.cpu().numpy()))
    for kind, name, block in (("attn_bias", "attn.residual_bias", "attn"), ("mlp_bias", "mlp.residual_bias", "mlp")):
        for layer, b in _layers(weights, name):
            rows.append((kind, layer, None, np.array([float(b.double() @ seen_by(block, layer))])))
    final_bias = weights[("layer_norm_bias.final", None)].double() @ column
    rows.append(("final_bias", None, None, np.array([float(final_bias)])))
    sizes = [len(v) for *_, v in rows]
    return pa.table(
        {
            "token_id": pa.array(np.full(sum(sizes), token_id, np.int32)),
            "kind": pa.array(np.repeat([k for k, *_ in rows], sizes)),
            "layer": pa.array(np.repeat([r[1] for r in rows], sizes), pa.int16()),
            "head": pa.array(np.repeat([r[2] for r in rows], sizes), pa.int16()),
            "node_index": pa.array(np.concatenate([np.arange(n) for n in sizes]).astype(np.int32)),
            "value": pa.array(np.concatenate([v for *_, v in rows]).astype(np.float64)),
        }
    )
