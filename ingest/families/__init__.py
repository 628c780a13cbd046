"""Model families: each reads its Hugging Face config (as transformers' config class parses it, under a
table of the fields it implements) and converts its checkpoint's tensors to the registry's standard layout.

The hooked model never sees a family name: a family is only a config reader and a tensor converter, and
the architecture it describes is ModelConfig's switches. A model_type with no module here is refused.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ingest.errors import ModelNotFound
from ingest.families import hf_config as hf_config_module
from ingest.families.fields import ConfigReader
from ingest.families.spec import Family
from ingest.families.tensors import StateDict
from ingest.model import HookedTransformer, ModelConfig, check_weights


def _families() -> dict[str, Family]:
    from ingest.families import gemma, gemma2, gpt2, gpt_neox, llama, mistral, olmo2, phi3, qwen2, qwen3

    families = (gpt2, llama, mistral, qwen2, qwen3, gpt_neox, gemma, gemma2, phi3, olmo2)
    return {f.model_type: f for f in (m.FAMILY for m in families)}


FAMILIES: dict[str, Family] = _families()


def family_of(hf_config: Mapping[str, object]) -> Family:
    model_type = hf_config.get("model_type")
    if model_type not in FAMILIES:
        raise ModelNotFound(
            f"model_type {model_type!r} is not supported: supported families are {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[str(model_type)]


def read_config(hf_config: Mapping[str, object]) -> tuple[ModelConfig, ConfigReader]:
    """The ModelConfig a checkpoint's config.json describes, read from transformers' own parsing of it
    (its defaults, precedence and rope normalisation); refuses any field it cannot honour."""
    family = family_of(hf_config)
    parsed = hf_config_module.parse(family.model_type, hf_config)
    reader = ConfigReader(family.model_type, parsed, family.fields)
    reader.check()
    return family.read_config(reader), reader


def build(hf_config: Mapping[str, object], state_dict: dict[str, torch.Tensor]) -> HookedTransformer:
    """A hooked model from a config dict and a Hugging Face state dict (any float dtype, read as float32)."""
    cfg, reader = read_config(hf_config)
    family = family_of(hf_config)
    tensors = StateDict(family.model_type, state_dict, family.prefix)
    weights = family.convert(cfg, tensors, reader)
    tensors.finish()
    check_weights(cfg, weights)
    return HookedTransformer(cfg, weights)
