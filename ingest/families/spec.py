"""What a model family module provides."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ingest.families.fields import ConfigReader, Rule
from ingest.families.tensors import StateDict, Weights
from ingest.model import ModelConfig


@dataclass(frozen=True)
class Family:
    """One model_type: its config field table, config reader and tensor converter."""

    model_type: str
    fields: Mapping[str, Rule]
    read_config: Callable[[ConfigReader], ModelConfig]
    convert: Callable[[ModelConfig, StateDict, ConfigReader], Weights]
    prefix: str  # of the body's tensor names in a *ForCausalLM checkpoint
