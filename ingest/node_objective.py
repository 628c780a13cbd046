"""A node as the backward objective (`actwh ingest --objective-node DST:LAYER:NODE[@TOKEN]`): L is one
node's activation at one token of each prompt, as the Transformer Debugger traces from a node, so every
stored gradient and act-times-grad scalar answers "what drives this node".

A node is named by its dst (the reference system's name, as in the fact table), its layer and its
`node_index`: an MLP neuron (mlp_pre_act, mlp_post_act), a residual-stream channel (resid_post_attn, ...),
an attention node (attn_qk_logits, attn_qk_probs: NODE is the head, and the token is a (query, key)
pair, `@Q,K`), or a latent of an SAE spliced in with --sae. Tokens count from 0, or from the end when
negative (-1 the last token, the default; for an attention node the key is then the query's own token
unless given). Norm scales are not held: the gradient is the model's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ingest.capture import Recorder
from ingest.errors import CaptureError
from ingest.model import Hook, ModelConfig
from ingest.sae.autoencoder import SparseAutoencoder
from warehouse.registry import LOCATION_BY_DST, Dimension, locations_of

USAGE = "give DST:LAYER:NODE[@TOKEN], e.g. mlp_post_act:5:100 or attn_qk_probs:3:2@-1,0"
_NODE_SIZES = {
    Dimension.MLP_ACTS: "d_mlp",
    Dimension.ATTN_HEADS: "n_heads",
    Dimension.RESIDUAL_STREAM_CHANNELS: "d_model",
}


@dataclass(frozen=True, eq=False)
class NodeObjective:
    """The node whose activation the backward pass starts from. `token` (and `key`, the attended-to
    token of an attention node) as given: negative counts from the end; key None: the query's token."""

    dst: str
    location: str  # the registry location the model hooks (for an SAE latent: the site the SAE reads)
    layer: int
    node_index: int
    token: int = -1
    key: int | None = None
    sae: SparseAutoencoder | None = None

    @property
    def pair(self) -> bool:
        return LOCATION_BY_DST[self.dst].n_token_axes == 2

    def label(self, at: tuple[int, int | None] | None = None) -> str:
        """DST:LAYER:NODE@TOKEN as given, or at the resolved positions `at` (prompts.objective_node)."""
        token, key = at if at is not None else (self.token, self.key)
        where = f"{token},{key}" if self.pair and key is not None else str(token)
        return f"{self.dst}:{self.layer}:{self.node_index}@{where}"

    def place(self, n_tokens: int) -> tuple[int, int | None]:
        """The node's token (and key) in a prompt of `n_tokens` tokens; ValueError when it has no such
        token or the key is after the query (its attention is 0 whatever the input)."""
        token = _position(self.token, n_tokens, "token")
        if not self.pair:
            return token, None
        key = token if self.key is None else _position(self.key, n_tokens, "key token")
        if key > token:
            raise ValueError(
                f"--objective-node {self.label()}: key token {key} is after query token {token} in this prompt"
                " (causal attention is 0 there): give a key at or before the query"
            )
        return token, key


def _position(given: int, n_tokens: int, what: str) -> int:
    position = given + n_tokens if given < 0 else given
    if not 0 <= position < n_tokens:
        raise ValueError(
            f"--objective-node {what} {given} is out of range for this {n_tokens}-token prompt "
            f"(0..{n_tokens - 1}, or -{n_tokens}..-1 from the end)"
        )
    return position


def parse_objective_node(
    text: str, config: ModelConfig, saes: Sequence[SparseAutoencoder], backward: bool, logit: bool = False
) -> NodeObjective:
    """The --objective-node value checked against the model and the spliced SAEs; CaptureError (one line)
    for a malformed value, an unknown dst, a layer or node out of range, no backward pass, or a logit
    objective given too (`logit`: --target or --distractor)."""
    if logit:
        raise CaptureError("--objective-node replaces the logit objective: drop --target and --distractor")
    if not backward:
        raise CaptureError("--objective-node starts the backward pass: drop --no-backward")
    spec, _, at = text.partition("@")
    parts = spec.split(":")
    if len(parts) != 3:
        raise CaptureError(f"--objective-node {text!r}: {USAGE}")
    dst = parts[0]
    try:
        layer, node_index = int(parts[1]), int(parts[2])
        positions = [int(p) for p in at.split(",")] if at else [-1]
    except ValueError:
        raise CaptureError(f"--objective-node {text!r}: LAYER, NODE and TOKEN are integers; {USAGE}") from None
    loc = LOCATION_BY_DST.get(dst)
    latent_site = {sae.site.latent: sae for sae in saes if sae.site.layer == layer}
    sae = latent_site.get(dst)
    allowed = _node_dsts(config, saes)
    if loc is None or dst not in allowed:
        if loc is not None and loc.from_sae and loc.node_type.value.endswith("autoencoder_latent"):
            raise CaptureError(
                f"--objective-node {dst}: no SAE spliced at layer {layer} writes it (load one with --sae)"
            )
        raise CaptureError(f"--objective-node: unknown node dst {dst!r}: choose from {', '.join(allowed)}")
    if not 0 <= layer < config.n_layers:
        raise CaptureError(
            f"--objective-node {text}: layer {layer} is out of range: this model has layers 0..{config.n_layers - 1}"
        )
    size = sae.d_sae if sae is not None else getattr(config, _NODE_SIZES[loc.shape[-1]])
    if not 0 <= node_index < size:
        raise CaptureError(f"--objective-node {text}: node {node_index} is out of range: {dst} has nodes 0..{size - 1}")
    if len(positions) > (2 if loc.n_token_axes == 2 else 1):
        raise CaptureError(f"--objective-node {text}: {dst} is at one token; {USAGE}")
    location = sae.site.location if sae is not None else loc.name
    key = positions[1] if len(positions) == 2 else None
    return NodeObjective(dst, location, layer, node_index, positions[0], key, sae)


def _node_dsts(config: ModelConfig, saes: Sequence[SparseAutoencoder]) -> list[str]:
    """The dsts a node objective may name in this model: one node per (layer, node_index, token), with a
    gradient, plus the latents of the spliced SAEs."""
    present = set(locations_of(config))
    own = [
        loc.dst
        for loc in LOCATION_BY_DST.values()
        if loc.name in present
        and loc.has_layers
        and loc.has_backward
        and loc.head_axis is None
        and loc.shape[-1] in _NODE_SIZES
        and not loc.from_sae
    ]
    return own + sorted({sae.site.latent for sae in saes if sae.site.layer is not None})


class NodeTap:
    """Wraps the pass's hook and keeps the live tensor the node is read from (the hook's input, so a
    splice at the same site adds no path of its own)."""

    def __init__(self, node: NodeObjective, hook: Hook, recorder: Recorder) -> None:
        self.node, self.hook, self.recorder = node, hook, recorder
        self.site: torch.Tensor | None = None

    def __call__(self, name: str, layer: int | None, tensor: torch.Tensor) -> torch.Tensor:
        if name == self.node.location and layer == self.node.layer:
            self.site = tensor
        return self.hook(name, layer, tensor)

    def values(self, places: Sequence[tuple[int, int | None] | None]) -> torch.Tensor:
        """The node's activation in each prompt of the batch at its place (token, key; NodeObjective.place),
        one per prompt; their sum is what backward runs on."""
        assert self.site is not None, f"the pass never reached {self.node.location} at layer {self.node.layer}"
        node = self.node
        values = []
        for b, place in enumerate(places):
            assert place is not None, "a prompt of a node-objective batch was not placed"
            token, key = place
            if node.sae is None:
                values.append(
                    self.site[b, token, key, node.node_index] if node.pair else self.site[b, token, node.node_index]
                )
                continue
            # The stored latents are computed from the site detached (ingest/sae/splice.py); the objective
            # takes the stored latent's value (gradient 1 there) plus the encoder's path from the site,
            # which carries the gradient upstream and adds 0.
            latents = self.recorder.live(node.dst, node.layer)
            encoded = node.sae.encode(self.site[b, token].reshape(1, -1))[0, node.node_index]
            values.append(latents[b, token, node.node_index] + (encoded - encoded.detach()))
        return torch.stack(values)
