"""The model side of a stored cache (queries/cache.py): its sizes under TransformerLens' `cfg` names and
the weights its analyses read from the warehouse's `weights` table (W_O, W_out, the output biases, the
final norm's gain and the unembedding columns stored for targets and distractors)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from warehouse.registry import WEIGHTS, ModelShape

if TYPE_CHECKING:
    import duckdb


@dataclass(frozen=True)
class CacheConfig:
    """The model sizes the analyses read (TransformerLens' `model.cfg` names)."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    normalization_type: str  # 'LN' (mean removed) or 'RMS'
    eps: float
    attn_only: bool = False


class MissingWeight(LookupError):
    """A weight an analysis needs is not in the warehouse: one line saying what to ingest."""


class CacheWeights:
    """Weights of a StoredCache's model (a mixin: it uses the cache's `cfg`, `model_id`, `device`, `_con`)."""

    cfg: CacheConfig
    model_shape: ModelShape
    model_id: int
    device: torch.device
    _con: duckdb.DuckDBPyConnection

    def _weight(self, location: str, layer: int | None = None) -> torch.Tensor:
        """A stored weight in the registry's layout ([head,] row[, col]), float32 on the cache's device."""
        key = f"{location}@{layer}"
        weights: dict[str, torch.Tensor] = self.__dict__.setdefault("_weights", {})
        if key not in weights:
            layer_sql, params = ("layer IS NULL", []) if layer is None else ("layer = ?", [layer])
            rows = self._con.execute(
                f"SELECT coalesce(head, 0) AS h, row_index AS r, coalesce(col_index, 0) AS c, value FROM weights"
                f" WHERE model_id = ? AND location = ? AND {layer_sql}",
                [self.model_id, location, *params],
            ).fetchnumpy()
            if len(rows["value"]) == 0:
                raise MissingWeight(f"weight {location} (layer {layer}) is not stored for this model")
            shape = [self.model_shape.size(d) for d in WEIGHTS[location].shape]
            values = np.zeros(shape, dtype=np.float32)
            index = {3: (rows["h"], rows["r"], rows["c"]), 2: (rows["r"], rows["c"]), 1: (rows["r"],)}[len(shape)]
            values[index] = rows["value"]
            weights[key] = torch.from_numpy(values).to(self.device)
        return weights[key]

    @property
    def W_U_columns(self) -> dict[int, torch.Tensor]:  # noqa: N802 - TransformerLens' name
        """The stored unembedding columns, final norm gain folded in: token id -> [d_model]."""
        if "_unembed" not in self.__dict__:
            rows = self._con.execute(
                "SELECT col_index, row_index, value FROM weights WHERE model_id = ? AND location = 'unembedding'",
                [self.model_id],
            ).fetchall()
            columns: dict[int, np.ndarray] = {}
            for token, channel, value in rows:
                columns.setdefault(token, np.zeros(self.cfg.d_model, dtype=np.float32))[channel] = value
            gain = self._weight("layer_norm_gain.final")
            self.__dict__["_unembed"] = {t: torch.from_numpy(c).to(self.device) * gain for t, c in columns.items()}
        return self.__dict__["_unembed"]

    def to_single_token(self, text: str) -> int:
        """The vocabulary id whose text is exactly `text` (from the warehouse's vocab table)."""
        rows = self._con.execute(
            "SELECT token_id FROM vocab WHERE model_id = ? AND text = ?", [self.model_id, text]
        ).fetchall()
        if len(rows) != 1:
            raise ValueError(
                f"{text!r} is {'no' if not rows else 'more than one'} single token of this model's vocabulary"
            )
        return int(rows[0][0])

    def tokens_to_residual_directions(self, tokens: str | int | torch.Tensor) -> torch.Tensor:
        """W_U[:, tokens] with the final norm's gain folded in: [d_model] for one token, else [*tokens.shape,
        d_model]. Raises MissingWeight for a token whose column is not stored."""
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        ids = torch.as_tensor(tokens)
        columns = self.W_U_columns
        if missing := sorted({int(t) for t in ids.flatten().tolist()} - set(columns)):
            raise MissingWeight(
                f"token {missing[0]} has no unembedding column in this warehouse: ingest a prompt with it as "
                "--target or --distractor, or ingest with --unembedding all"
            )
        if ids.numel() == 1:
            return columns[int(ids.flatten()[0])]
        return torch.stack([columns[int(t)] for t in ids.flatten().tolist()]).reshape(*ids.shape, self.cfg.d_model)

    def accumulated_bias(self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True) -> torch.Tensor:
        """The output biases written to the residual before `layer`'s attention (its MLP with mlp_input): [d_model]."""
        total = torch.zeros(self.cfg.d_model, device=self.device)
        for block in range(layer):
            total = total + self._weight("attn.residual_bias", block)
            if include_mlp_biases:
                total = total + self._weight("mlp.residual_bias", block)
        if mlp_input:
            total = total + self._weight("attn.residual_bias", layer)
        return total
