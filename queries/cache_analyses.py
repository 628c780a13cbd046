"""TransformerLens' ActivationCache analyses over a stored cache (queries/cache.py): residual stacks,
their norm scaling, head and neuron results, and logit attributions, computed as TransformerLens 4.3
computes them on a model loaded with its default LayerNorm folding (the final norm's gain folded into the
unembedding; no weight centring), so `logit_attrs` gives the direct effects of the warehouse's views.
The weights come from the warehouse (queries/cache_weights.py). A model with learned positions stores the
embedding and position embedding summed: the stacks hold them as one component, 'embed+pos_embed'.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from queries.cache_weights import CacheWeights

# A position, batch or neuron selection as TransformerLens takes one: None (all), an int (that one, axis
# dropped), a (start, stop[, step]) tuple or slice, or a list / array / tensor of indices.
SliceInput = int | tuple[int, ...] | slice | Sequence[int] | np.ndarray | torch.Tensor | None


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


class CacheAnalyses(CacheWeights):
    """The analyses of a StoredCache (a mixin: it uses the cache's `__getitem__`, `has_batch_dim`,
    `has_embed` and `model_config`, and the weights of CacheWeights)."""

    has_batch_dim: bool
    has_embed: bool
    model_config: dict[str, Any]
    __getitem__: Any  # StoredCache's: a hook name or short key -> tensor

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
