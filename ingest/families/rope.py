"""Reading a checkpoint's rotary settings from either layout transformers writes.

transformers 5 saves them inside `rope_parameters` (rope_type, rope_theta, the scaling's parameters,
partial_rotary_factor); earlier versions wrote `rope_theta` at the top level and the scaling in
`rope_scaling` (with `type` or `rope_type`). Values inside the dict win over top-level ones, as in
transformers. Every key of the dict is either used by its rope type or refused.
"""

from __future__ import annotations

from ingest.families.fields import USED, ConfigReader, Rule, is_off
from ingest.rotary import KINDS, Rope, yarn_attention_factor

FIELDS: dict[str, Rule] = {
    "rope_parameters": USED,
    "rope_scaling": USED,
    "rope_theta": USED,
    "partial_rotary_factor": USED,
    "original_max_position_embeddings": USED,
}

DEFAULT_THETA = 10000.0

_COMMON_KEYS = {"rope_type", "type", "rope_theta", "partial_rotary_factor"}
_KEYS_BY_KIND: dict[str, set[str]] = {
    "default": set(),
    "linear": {"factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
    "yarn": {
        "factor",
        "attention_factor",
        "beta_fast",
        "beta_slow",
        "mscale",
        "mscale_all_dim",
        "original_max_position_embeddings",
        "truncate",
    },
}


def read_rope(
    reader: ConfigReader, head_dim: int, theta: float | None = None, partial_rotary_factor: float | None = None
) -> Rope:
    """The Rope a config describes; `theta` and `partial_rotary_factor` are the family's fallbacks (or
    values from its own legacy fields) for when neither layout gives them."""
    params = dict(reader.get("rope_parameters") or reader.get("rope_scaling") or {})
    kind = params.get("rope_type") or params.get("type") or "default"
    if kind not in KINDS:
        reader.refuse("rope_parameters.rope_type", kind, f"implemented: {', '.join(KINDS)}")
    for key, value in params.items():
        if key not in _COMMON_KEYS | _KEYS_BY_KIND[kind] and not is_off(value):
            reader.refuse(f"rope_parameters.{key}", value, f"not a parameter of rope_type {kind!r} here")
    theta = float(params.get("rope_theta") or reader.get("rope_theta") or theta or DEFAULT_THETA)
    partial = params.get("partial_rotary_factor") or reader.get("partial_rotary_factor") or partial_rotary_factor or 1.0
    rotary_dim = int(head_dim * float(partial))
    if rotary_dim % 2 or rotary_dim <= 0:
        reader.refuse("rope_parameters.partial_rotary_factor", partial, f"gives {rotary_dim} rotary channels")
    rope = Rope(theta=theta, rotary_dim=rotary_dim, kind=kind)
    if kind == "default":
        return rope
    for key in sorted(_KEYS_BY_KIND[kind] & {"factor", "low_freq_factor", "high_freq_factor"}):
        if params.get(key) is None and not (kind == "yarn" and key == "factor"):
            reader.refuse(f"rope_parameters.{key}", None, f"rope_type {kind!r} needs it")
    context = int(
        params.get("original_max_position_embeddings")
        or reader.get("original_max_position_embeddings")
        or reader.require("max_position_embeddings")
    )
    # YaRN without a factor scales from the original context to the model's
    factor = float(params.get("factor") or int(reader.require("max_position_embeddings")) / context)
    if kind == "linear":
        return Rope(theta=theta, rotary_dim=rotary_dim, kind=kind, factor=factor)
    if kind == "llama3":
        return Rope(
            theta=theta,
            rotary_dim=rotary_dim,
            kind=kind,
            factor=factor,
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=context,
        )
    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        attention_factor = yarn_attention_factor(factor, params.get("mscale"), params.get("mscale_all_dim"))
    return Rope(
        theta=theta,
        rotary_dim=rotary_dim,
        kind=kind,
        factor=factor,
        original_max_position_embeddings=context,
        beta_fast=float(params.get("beta_fast") or 32),
        beta_slow=float(params.get("beta_slow") or 1),
        truncate=bool(params.get("truncate", True)),
        attention_factor=float(attention_factor),
    )
