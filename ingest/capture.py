"""What to capture, the hook that keeps it, and the conversion of kept tensors to long Arrow tables."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from ingest.errors import CaptureError, ModelNotFound
from ingest.model import ModelConfig
from warehouse.facts import FACT_SCHEMA, constant_int, constant_name, expand_axes
from warehouse.registry import DEFAULT_CAPTURE, LOCATIONS, ActivationLocation, PassType

LOGITS_TOP_K = 20


@dataclass(frozen=True)
class CaptureSpec:
    """Locations with the passes to store, and the layers (None: all)."""

    passes: dict[str, tuple[PassType, ...]] = field(default_factory=lambda: dict(DEFAULT_CAPTURE))
    layers: frozenset[int] | None = None
    logits_top_k: int = LOGITS_TOP_K

    @classmethod
    def parse(cls, locations: list[str] | None, layers: list[int] | None, n_layers: int) -> CaptureSpec:
        """`locations` are names, each optionally suffixed ':forward' or ':backward' (default: both)."""
        passes: dict[str, tuple[PassType, ...]] = dict(DEFAULT_CAPTURE)
        if locations:
            passes = {}
            for item in locations:
                name, _, which = item.partition(":")
                if name not in LOCATIONS:
                    raise CaptureError(f"unknown location {name!r}: choose from {', '.join(LOCATIONS)}")
                loc = LOCATIONS[name]
                if which:
                    try:
                        wanted: tuple[PassType, ...] = (PassType(which),)
                    except ValueError:
                        raise CaptureError(f"unknown pass {which!r} in {item!r}: use forward or backward") from None
                else:
                    wanted = (PassType.FORWARD, PassType.BACKWARD) if loc.has_backward else (PassType.FORWARD,)
                if PassType.BACKWARD in wanted and not loc.has_backward:
                    raise CaptureError(f"{name} has no backward pass: store it as {name}:forward")
                passes[name] = tuple(dict.fromkeys(passes.get(name, ()) + wanted))
        if layers:
            bad = [layer for layer in layers if not 0 <= layer < n_layers]
            if bad:
                raise CaptureError(f"layer {bad[0]} is out of range: this model has layers 0..{n_layers - 1}")
        return cls(passes, frozenset(layers) if layers else None)

    def labels(self) -> list[str]:
        return [f"{name}:{p.value}" for name, ps in self.passes.items() for p in ps]

    def wants(self, name: str, layer: int | None, pass_type: PassType) -> bool:
        if pass_type not in self.passes.get(name, ()):
            return False
        return layer is None or self.layers is None or layer in self.layers


class Recorder:
    """The hook: keeps the forward value of wanted locations and retains gradients where wanted."""

    def __init__(self, spec: CaptureSpec, backward: bool) -> None:
        self.spec = spec
        self.backward = backward
        self.forward: dict[tuple[str, int | None], torch.Tensor] = {}
        self._grad_of: dict[tuple[str, int | None], torch.Tensor] = {}

    def __call__(self, name: str, layer: int | None, tensor: torch.Tensor) -> torch.Tensor:
        if self.spec.wants(name, layer, PassType.FORWARD):
            self.forward[(name, layer)] = tensor.detach()
        if self.backward and tensor.requires_grad and self.spec.wants(name, layer, PassType.BACKWARD):
            tensor.retain_grad()
            self._grad_of[(name, layer)] = tensor
        return tensor

    def gradients(self) -> dict[tuple[str, int | None], torch.Tensor]:
        return {key: t.grad for key, t in self._grad_of.items() if t.grad is not None}


def location_table(
    loc: ActivationLocation,
    layer: int | None,
    array: np.ndarray,
    lengths: np.ndarray,
    prompt_ids: np.ndarray,
    pass_type: PassType,
) -> pa.Table:
    """Rows for one location and layer over a right-padded batch: real tokens only, causal pairs only."""
    n_tok_axes = loc.n_token_axes
    pos = np.arange(array.shape[1])
    valid = pos[None, :] < lengths[:, None]
    if n_tok_axes == 2:
        valid = valid[:, :, None] & (pos[None, None, :] <= pos[None, :, None])
    selection = np.nonzero(valid)
    block = array[valid]
    lead, trail = expand_axes(list(selection), block.shape[1:])
    n = block.size
    head_axis = loc.head_axis
    return pa.table(
        {
            "prompt_id": pa.array(prompt_ids[lead[0]].astype(np.int32)),
            "token": pa.array(lead[1].astype(np.int16)),
            "token2": pa.array(lead[2].astype(np.int16)) if n_tok_axes == 2 else pa.nulls(n, pa.int16()),
            "layer": constant_int(layer, n, pa.int16()),
            "head": pa.array(trail[head_axis - n_tok_axes].astype(np.int16))
            if head_axis is not None
            else pa.nulls(n, pa.int16()),
            "node_type": constant_name(loc.node_type.value, n),
            "node_index": pa.array(trail[-1].astype(np.int32)),
            "dst": constant_name(loc.dst, n),
            "pass_type": constant_name(pass_type.value, n),
            "value": pa.array(block.reshape(-1).astype(np.float32, copy=False)),
        },
        schema=FACT_SCHEMA,
    )


def logits_table(
    last_logits: np.ndarray, last_token: np.ndarray, prompt_ids: np.ndarray, top_k: int, extra_ids: list[list[int]]
) -> pa.Table:
    """The last token's top-k logits plus any extra ids (the target and distractor) per prompt."""
    chosen = []
    for row, extra in zip(last_logits, extra_ids, strict=True):
        top = np.argpartition(-row, top_k - 1)[:top_k] if top_k < row.size else np.arange(row.size)
        chosen.append(np.union1d(top, np.asarray(extra, dtype=np.int64)))
    counts = [ids.size for ids in chosen]
    ids = np.concatenate(chosen)
    n = ids.size
    loc = LOCATIONS["logits"]
    return pa.table(
        {
            "prompt_id": np.repeat(prompt_ids, counts).astype(np.int32),
            "token": np.repeat(last_token, counts).astype(np.int16),
            "token2": pa.nulls(n, pa.int16()),
            "layer": pa.nulls(n, pa.int16()),
            "head": pa.nulls(n, pa.int16()),
            "node_type": constant_name(loc.node_type.value, n),
            "node_index": ids.astype(np.int32),
            "dst": constant_name(loc.dst, n),
            "pass_type": constant_name(PassType.FORWARD.value, n),
            "value": last_logits[np.repeat(np.arange(len(chosen)), counts), ids].astype(np.float32),
        },
        schema=FACT_SCHEMA,
    )


# Architecture switches the derived views do not model yet: a warehouse of such a model would answer
# direct effects wrongly (the views hold no post-block norm scale, and take the final-residual gradient of
# an uncapped logit), so the ingest refuses it. The hooked model itself is exact for them.
_VIEWS_DO_NOT_MODEL = {
    "post_block_norms": "norms after the attention and MLP blocks",
    "final_logit_softcap": "soft-capped final logits",
}


def check_storable(config: ModelConfig, spec: CaptureSpec) -> None:
    """Refuse a model the views would misread, and locations this model does not have."""
    cfg = config
    for switch, what in _VIEWS_DO_NOT_MODEL.items():
        if getattr(cfg, switch):
            raise ModelNotFound(
                f"{cfg.family} models have {what}, which the derived views do not model yet (their direct "
                "effects would be wrong): this family is not ingested"
            )
    for name in spec.passes:
        switch = LOCATIONS[name].only_with
        if switch and not getattr(cfg, switch):
            raise CaptureError(f"location {name} does not exist in this model (it has no {switch.replace('_', ' ')})")
