"""A checkpoint's rotary embedding, as transformers' own model computes it.

transformers' config class folds either layout (`rope_parameters`; or `rope_theta` with `rope_scaling`
under `type` or `rope_type`, and a top-level `partial_rotary_factor`) into `rope_parameters`, with its
own precedence and defaults. The inverse frequencies and the cos/sin multiplier are then taken from the
family's own rotary embedding class (LlamaRotaryEmbedding, GPTNeoXRotaryEmbedding, ...) built from that
config object, so which keys a rope type reads, their defaults, and whether the family reads
`partial_rotary_factor` at all (Llama's default rope does not, GPT-NeoX's and Phi-3's do) are
transformers' by construction. Rope types whose frequencies change with the sequence length (dynamic,
longrope) are refused, and so is a rotary the family's attention could not apply to its heads.
"""

from __future__ import annotations

import importlib
from typing import Any

from ingest.families.fields import USED, ConfigReader, Rule
from ingest.families.hf_config import quiet_transformers
from ingest.rotary import Rope

# Attributes transformers' config object may keep beside rope_parameters (a legacy spelling a family's
# class does not fold in): whatever they mean is what the family's rotary embedding makes of them.
FIELDS: dict[str, Rule] = {
    "rope_parameters": USED,
    "rope_theta": USED,
    "partial_rotary_factor": USED,
    "original_max_position_embeddings": USED,
}


def transformers_rotary(config: Any) -> tuple[list[float], float]:
    """(inverse frequencies, cos/sin multiplier) from the rotary embedding class of the config's family,
    in transformers.models.<model_type>.modeling_<model_type>, computed in float32 on the CPU."""
    module = importlib.import_module(f"transformers.models.{config.model_type}.modeling_{config.model_type}")
    rotary_class = getattr(module, type(config).__name__.removesuffix("Config") + "RotaryEmbedding")
    rotary = rotary_class(config)
    return rotary.inv_freq.tolist(), float(rotary.attention_scaling)


def read_rope(reader: ConfigReader, head_dim: int, leading_channels: bool = False) -> Rope:
    """The Rope of a config. `leading_channels`: the family's attention rotates the first channels its
    frequencies cover and passes the rest (GPT-NeoX, Phi-3); otherwise it rotates the whole head, and
    frequencies for fewer channels are refused (transformers' model would fail on them)."""
    params = dict(reader.require("rope_parameters"))
    kind = str(params.get("rope_type"))
    if "dynamic" in kind or kind == "longrope":
        reader.refuse("rope_parameters.rope_type", kind, "its frequencies change with the sequence length")
    try:
        with quiet_transformers():
            inv_freq, attention_factor = transformers_rotary(reader.config)
    except Exception as err:  # noqa: BLE001 - transformers cannot compute it: neither can we
        reader.refuse("rope_parameters", params, f"transformers' rotary embedding fails on it: {err!r}"[:200])
    rotary_dim = 2 * len(inv_freq)
    if rotary_dim > head_dim or (rotary_dim != head_dim and not leading_channels):
        reader.refuse(
            "rope_parameters.partial_rotary_factor",
            params.get("partial_rotary_factor"),
            f"gives {rotary_dim} rotary channels, which this family's attention cannot apply to {head_dim}-channel "
            "heads",
        )
    return Rope(
        kind=kind,
        theta=float(params["rope_theta"]),
        rotary_dim=rotary_dim,
        inv_freq=tuple(inv_freq),
        attention_factor=attention_factor,
    )
