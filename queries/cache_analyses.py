"""TransformerLens' ActivationCache analyses over a stored cache (queries/cache.py): residual stacks,
their norm scaling, head and neuron results, and logit attributions, computed as TransformerLens 4.3
computes them on a model loaded with its default LayerNorm folding (the final norm's gain folded into the
unembedding; no weight centring), so `logit_attrs` gives the direct effects of the warehouse's views.

The weights they need are read from the warehouse's `weights` table: W_O (attn.to_residual), W_out
(mlp.to_residual), the output biases, the final norm's gain and the unembedding columns stored for the
targets and distractors. A model with learned positions stores the embedding and position embedding
summed: the stacks hold them as one component labelled 'embed+pos_embed'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from warehouse.registry import WEIGHTS

if TYPE_CHECKING:
    import duckdb

# A position, batch or neuron selection as TransformerLens takes one: None (all), an int (that one, axis
# dropped), a (start, stop[, step]) tuple or slice, or a list / array / tensor of indices.
SliceInput = int | tuple[int, ...] | slice | Sequence[int] | np.ndarray | torch.Tensor | None


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


def take(x: torch.Tensor, sel: SliceInput, dim: int) -> torch.Tensor:
    """`x` restricted to `sel` along `dim` (an int selection drops the axis)."""
    if sel is None:
        return x
    if isinstance(sel, int):
        return x.select(dim, sel)
    if isinstance(sel, tuple):
        sel = slice(*sel)
    if isinstance(sel, slice):
        index: list[Any] = [slice(None)] * x.ndim
        index[dim] = sel
        return x[tuple(index)]
    return x.index_select(dim % x.ndim, torch.as_tensor(np.asarray(sel), device=x.device).long())


class MissingWeight(LookupError):
    """A weight an analysis needs is not in the warehouse: one line saying what to ingest."""


class CacheAnalyses:
    """The analyses of a StoredCache (a mixin: it uses the cache's `__getitem__`, `cfg`, `has_batch_dim`,
    `has_embed`, `model_id`, `model_config` and `_con`)."""

    cfg: CacheConfig
    has_batch_dim: bool
    has_embed: bool
    model_id: int
    model_config: dict[str, Any]
    device: torch.device
    cache_dict: dict[str, torch.Tensor]
    _con: duckdb.DuckDBPyConnection

    def __getitem__(self, key: Any) -> torch.Tensor:
        raise NotImplementedError

    # -- weights ---------------------------------------------------------------------------------------

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
            sizes = {"attn_heads": self.cfg.n_heads, "value_channels": self.cfg.d_head, "mlp_acts": self.cfg.d_mlp}
            shape = [sizes.get(str(d), self.cfg.d_model) for d in WEIGHTS[location].shape]
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

    # -- norm scaling ----------------------------------------------------------------------------------

    def _layer(self, layer: int | None) -> int:
        return self.cfg.n_layers if layer is None or layer == -1 else layer

    def apply_ln_to_stack(
        self,
        residual_stack: torch.Tensor,
        layer: int | None = None,
        mlp_input: bool = False,
        pos_slice: SliceInput = None,
        batch_slice: SliceInput = None,
        has_batch_dim: bool = True,
        recompute_ln: bool = False,
    ) -> torch.Tensor:
        """Each component of [components, *batch_and_pos, d_model] as the input of `layer`'s norm would scale
        it (ln2 with mlp_input; the final norm for layer None, -1 or n_layers): mean removed for LayerNorm,
        divided by the stored scale (recompute_ln at the final norm: by each component's own)."""
        layer = self._layer(layer)
        if has_batch_dim:
            residual_stack = take(residual_stack, batch_slice, 1)
        final = layer == self.cfg.n_layers
        if self.cfg.normalization_type == "LN":
            residual_stack = residual_stack - residual_stack.mean(dim=-1, keepdim=True)
        if recompute_ln and final:
            return residual_stack / (residual_stack.pow(2).mean(dim=-1, keepdim=True) + self.cfg.eps).sqrt()
        scale = self["ln_final.hook_scale" if final else f"blocks.{layer}.ln{2 if mlp_input else 1}.hook_scale"]
        scale = take(scale, pos_slice, -2)
        if self.has_batch_dim:
            scale = take(scale, batch_slice, 0)
        return residual_stack / scale

    # -- residual stacks -------------------------------------------------------------------------------

    def _embedding(self) -> tuple[str, torch.Tensor]:
        """The residual's start: hook_embed, or the embedding plus position embedding stored as one."""
        if self.has_embed:
            return "embed", self["hook_embed"]
        label = "embed+pos_embed" if self.model_config.get("rope") is None else "embed"
        return label, self["blocks.0.hook_resid_pre"]

    def accumulated_resid(
        self,
        layer: int | None = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: SliceInput = None,
        mlp_input: bool = False,
        return_labels: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[str]]:
        """The residual stream at each layer's input up to `layer` (all and the final one: None or -1):
        [components, *batch_and_pos, d_model], with resid_mid too if incl_mid (and at `layer` if mlp_input)."""
        layer = self._layer(layer)
        components, labels = [], []
        for block in range(layer + 1):
            if block == self.cfg.n_layers:
                components.append(self[("resid_post", self.cfg.n_layers - 1)])
                labels.append("final_post")
                continue
            components.append(self[("resid_pre", block)])
            labels.append(f"{block}_pre")
            if (incl_mid and block < layer) or (mlp_input and block == layer):
                components.append(self[("resid_mid", block)])
                labels.append(f"{block}_mid")
        stack = torch.stack([take(c, pos_slice, -2) for c in components])
        if apply_ln:
            stack = self.apply_ln_to_stack(
                stack, layer, mlp_input, pos_slice, has_batch_dim=self.has_batch_dim,
                recompute_ln=layer == self.cfg.n_layers,
            )  # fmt: skip
        return (stack, labels) if return_labels else stack

    def decompose_resid(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        mode: Literal["all", "mlp", "attn"] = "all",
        apply_ln: bool = False,
        pos_slice: SliceInput = None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[str]]:
        """The residual at `layer`'s input as the embedding plus each block's attention and MLP output:
        [components, *batch_and_pos, d_model]; `mode` keeps only 'attn' or 'mlp' outputs."""
        layer = self._layer(layer)
        components, labels = [], []
        if incl_embeds:
            label, embedding = self._embedding()
            components.append(embedding)
            labels.append(label)
        for block in range(layer):
            if mode != "mlp":
                components.append(self[("attn_out", block)])
                labels.append(f"{block}_attn_out")
            if mode != "attn":
                components.append(self[("mlp_out", block)])
                labels.append(f"{block}_mlp_out")
        if mlp_input and mode != "mlp":
            components.append(self[("attn_out", layer)])
            labels.append(f"{layer}_attn_out")
        stack = torch.stack([take(c, pos_slice, -2) for c in components])
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input, pos_slice)
        return (stack, labels) if return_labels else stack

    def _empty_stack(self, pos_slice: SliceInput) -> torch.Tensor:
        return torch.zeros(0, *take(self["blocks.0.hook_resid_pre"], pos_slice, -2).shape, device=self.device)

    # -- heads and neurons -----------------------------------------------------------------------------

    def _head_results(self, layer: int) -> torch.Tensor:
        """blocks.L.attn.hook_result: each head's write to the residual, z W_O: [*batch, pos, head, d_model]."""
        return torch.einsum("...hd,hdm->...hm", self[("z", layer, "attn")], self._weight("attn.to_residual", layer))

    def stack_head_results(
        self,
        layer: int = -1,
        return_labels: bool = False,
        incl_remainder: bool = False,
        pos_slice: SliceInput = None,
        apply_ln: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[str]]:
        """Every head's result before `layer`, labelled 'L{l}H{h}': [layer * n_heads, *batch_and_pos,
        d_model]; `incl_remainder` adds the rest of resid_post of layer - 1."""
        layer = self._layer(layer)
        labels = [f"L{block}H{head}" for block in range(layer) for head in range(self.cfg.n_heads)]
        if layer > 0:
            per_layer = [take(self[("result", block, "attn")], pos_slice, -3) for block in range(layer)]
            stack = torch.cat(per_layer, dim=-2).movedim(-2, 0)
        else:
            stack = self._empty_stack(pos_slice)
        if incl_remainder:
            residual = take(self[("resid_post", layer - 1)], pos_slice, -2)
            stack = torch.cat([stack, (residual - stack.sum(dim=0))[None]])
            labels.append("remainder")
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def stack_activation(self, activation_name: str, layer: int = -1, sublayer_type: str | None = None) -> torch.Tensor:
        """One activation of every block before `layer`, stacked: [layers, *its shape]."""
        return torch.stack([self[(activation_name, block, sublayer_type)] for block in range(self._layer(layer))])

    def get_neuron_results(
        self,
        layer: int,
        neuron_slice: SliceInput = None,
        pos_slice: SliceInput = None,
        project_output_onto: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Each MLP neuron's write to the residual, post-activation times its W_out row: [*batch_and_pos,
        neurons, d_model] (projected onto `project_output_onto` if given)."""
        acts = take(take(self[("post", layer, "mlp")], pos_slice, -2), neuron_slice, -1)
        w_out = take(self._weight("mlp.to_residual", layer), neuron_slice, 0)
        if project_output_onto is None:
            return acts[..., None] * w_out
        projected = w_out @ project_output_onto
        return acts * projected if project_output_onto.ndim == 1 else acts[..., None] * projected

    def stack_neuron_results(
        self,
        layer: int,
        pos_slice: SliceInput = None,
        neuron_slice: SliceInput = None,
        return_labels: bool = False,
        incl_remainder: bool = False,
        apply_ln: bool = False,
        project_output_onto: torch.Tensor | None = None,
        mlp_input: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[str]]:
        """Every MLP neuron's result before `layer`, labelled 'L{l}N{i}': [neurons, *batch_and_pos, d_model];
        `incl_remainder` adds the rest of the residual that layer's norm reads."""
        layer = self._layer(layer)
        if isinstance(neuron_slice, int):  # layers are concatenated on the neuron axis: keep it
            neuron_slice = [neuron_slice]
        neurons = take(torch.arange(self.cfg.d_mlp), neuron_slice, 0).tolist()
        labels = [f"L{block}N{n}" for block in range(layer) for n in neurons]
        if layer > 0:
            per_layer = [self.get_neuron_results(block, neuron_slice, pos_slice) for block in range(layer)]
            stack = torch.cat(per_layer, dim=-2).movedim(-2, 0)
        else:
            stack = self._empty_stack(pos_slice)
        if incl_remainder:
            target = self[("resid_mid", layer) if mlp_input else ("resid_post", layer - 1)]
            stack = torch.cat([stack, (take(target, pos_slice, -2) - stack.sum(dim=0))[None]])
            labels.append("remainder")
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input, pos_slice)
        stack = _project(stack, project_output_onto)
        return (stack, labels) if return_labels else stack

    def get_full_resid_decomposition(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        expand_neurons: bool = True,
        apply_ln: bool = False,
        pos_slice: SliceInput = None,
        return_labels: bool = False,
        project_output_onto: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[str]]:
        """The residual at `layer`'s input as every head's result, every neuron's result (or each MLP's output
        without expand_neurons), the embedding and the summed output biases: [components, *batch_and_pos,
        d_model]."""
        layer = self._layer(layer)
        heads, labels = self.stack_head_results(layer + int(mlp_input), pos_slice=pos_slice, return_labels=True)
        components = [heads]
        if not self.cfg.attn_only and layer > 0:
            if expand_neurons:
                mlps, mlp_labels = self.stack_neuron_results(layer, pos_slice, return_labels=True)
            else:
                mlps, mlp_labels = self.decompose_resid(
                    layer, mlp_input, "mlp", pos_slice=pos_slice, incl_embeds=False, return_labels=True
                )
            components.append(mlps)
            labels += mlp_labels
        label, embedding = self._embedding()
        components.append(take(embedding, pos_slice, -2)[None])
        labels.append(label)
        bias = self.accumulated_bias(layer, mlp_input, include_mlp_biases=expand_neurons)
        components.append(bias.expand((1, *heads.shape[1:])))
        labels.append("bias")
        stack = torch.cat(components)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input, pos_slice)
        stack = _project(stack, project_output_onto)
        return (stack, labels) if return_labels else stack

    # -- logits ----------------------------------------------------------------------------------------

    def logit_attrs(
        self,
        residual_stack: torch.Tensor,
        tokens: str | int | torch.Tensor,
        incorrect_tokens: str | int | torch.Tensor | None = None,
        pos_slice: SliceInput = None,
        batch_slice: SliceInput = None,
        has_batch_dim: bool = True,
    ) -> torch.Tensor:
        """Each component's direct effect on the logit of `tokens` (minus that of `incorrect_tokens`): the
        component scaled by the final norm, dotted with the gain-folded unembedding column:
        [components, *batch_and_pos]. `tokens` may be one token (text or id) or one id per prompt."""
        directions = self.tokens_to_residual_directions(tokens)
        if incorrect_tokens is not None:
            if _shape(self, tokens) != _shape(self, incorrect_tokens):
                raise ValueError("tokens and incorrect_tokens must have the same shape")
            directions = directions - self.tokens_to_residual_directions(incorrect_tokens)
        scaled = self.apply_ln_to_stack(
            residual_stack, -1, pos_slice=pos_slice, batch_slice=batch_slice, has_batch_dim=has_batch_dim
        )
        per_prompt = has_batch_dim and not isinstance(batch_slice, int) and scaled.ndim == 4
        if per_prompt and directions.ndim == 2 and directions.shape[0] == scaled.shape[1]:
            directions = directions.unsqueeze(-2)  # one direction per prompt, broadcast over positions
        return (scaled * directions).sum(dim=-1)


def _shape(cache: CacheAnalyses, tokens: str | int | torch.Tensor) -> torch.Size:
    return torch.as_tensor(cache.to_single_token(tokens) if isinstance(tokens, str) else tokens).shape


def _project(stack: torch.Tensor, onto: torch.Tensor | None) -> torch.Tensor:
    return stack if onto is None else stack @ onto
