"""Weight-only factor tables, computed from the model's tensors at ingest (float64, exact to float32).

The views join these instead of multiplying weight rows per query: `mlp_out_norms` once per model and
`direction_factors` once per target or distractor token (definitions in warehouse/schema.sql). The SQL
macro `direction_factors_for(v)` (queries/support/10_weight_factors.sql) computes the same factors from
the stored weight rows for a pair given at query time; tests hold the two equal.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

FACTOR_WEIGHTS: tuple[str, ...] = (
    "unembedding",
    "layer_norm_gain.final",
    "mlp.to_residual",
    "attn.to_residual",
    "attn.residual_bias",
    "mlp.residual_bias",
)

Weights = dict[tuple[str, int | None], torch.Tensor]


def _layers(weights: Weights, name: str) -> list[tuple[int, torch.Tensor]]:
    return sorted((layer, t) for (n, layer), t in weights.items() if n == name and layer is not None)


def mlp_out_norms(weights: Weights) -> pa.Table:
    """||W_out[l][i,:]|| per layer and neuron: columns layer, node_index, value (float32)."""
    parts = [(layer, torch.linalg.vector_norm(w.double(), dim=1)) for layer, w in _layers(weights, "mlp.to_residual")]
    return pa.table(
        {
            "layer": pa.array(np.concatenate([np.full(len(v), layer) for layer, v in parts]).astype(np.int16)),
            "node_index": pa.array(np.concatenate([np.arange(len(v)) for _, v in parts]).astype(np.int32)),
            "value": pa.array(np.concatenate([v.float().cpu().numpy() for _, v in parts])),
        }
    )


def direction_factors(weights: Weights, token_id: int, layernorm: bool) -> pa.Table:
    """Every factor of token v = token_id: u = P(gain_f * W_U[:, v]) ('residual', node_index = channel),
    W_out[l][i,:] . u ('mlp'), W_O[l][h][c,:] . u ('attn'), b_O[l] . u ('attn_bias') and b_out[l] . u
    ('mlp_bias'). P removes the mean over channels for LayerNorm models (DERIVED_SCALARS.md, g_T).
    Columns token_id, kind, layer, head, node_index, value (float64)."""
    u = weights[("layer_norm_gain.final", None)].double() * weights[("unembedding", None)][:, token_id].double()
    if layernorm:
        u = u - u.mean()
    # 'attn' rows first: they have a value in every column (see fact_rows in ingest/worker.py for why).
    rows: list[tuple[str, int | None, int | None, np.ndarray]] = []
    for layer, w in _layers(weights, "attn.to_residual"):
        for head, per_head in enumerate(w.double() @ u):
            rows.append(("attn", layer, head, per_head.cpu().numpy()))
    for layer, w in _layers(weights, "mlp.to_residual"):
        rows.append(("mlp", layer, None, (w.double() @ u).cpu().numpy()))
    rows.append(("residual", None, None, u.cpu().numpy()))
    for kind, name in (("attn_bias", "attn.residual_bias"), ("mlp_bias", "mlp.residual_bias")):
        for layer, b in _layers(weights, name):
            rows.append((kind, layer, None, np.array([float(b.double() @ u)])))
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
