"""Config strictness: every field of a checkpoint's config is implemented, inert, or refused.

The fields are those of transformers' config object for the checkpoint (ingest/families/hf_config.py):
what config.json says after transformers' defaults, precedence and normalisation, so a key left out
means the class's default and two spellings mean the one transformers keeps. Each family declares a
table of the fields it knows: fields its reader implements (any value it accepts; the reader validates
them), fields implemented for some values only, and fields its transformers model never reads or that
cannot change a float32 forward pass (ids, dropout, initialisation, caching). A field missing from the
table is refused unless its value is an "off" value (None, False, 0, empty), which is how configs spell
a feature that is not used. So a config field transformers adds tomorrow is refused, not ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from ingest.errors import ModelNotFound


class UnsupportedConfig(ModelNotFound):
    """A config value the hooked model does not implement; the message names the field and its value."""


@dataclass(frozen=True)
class Rule:
    """How a family treats one config field.

    kind 'used': read by the family's reader, which checks the value; 'inert': cannot change the forward
    pass; 'only': implemented for the listed values (`values`), refused otherwise.
    """

    kind: str
    values: tuple[object, ...] = ()
    note: str = ""

    def accepts(self, value: object) -> bool:
        return self.kind != "only" or any(_same(value, v) for v in self.values)


USED = Rule("used")


def inert(note: str) -> Rule:
    return Rule("inert", note=note)


def only(*values: object) -> Rule:
    return Rule("only", values)


def _same(a: object, b: object) -> bool:
    """Equal, with booleans never equal to numbers (True == 1 in Python; a config's true is not its 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def is_off(value: object) -> bool:
    """None, False, 0, or an empty string or collection: a config's way of leaving a feature unused."""
    if value is None or value is False:
        return True
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value == 0
    return isinstance(value, str | list | tuple | dict) and len(value) == 0


# Fields transformers writes into every config, none of which changes a float32 forward pass.
COMMON: dict[str, Rule] = {
    **{
        name: inert("metadata")
        for name in (
            "_name_or_path",
            "architectures",
            "model_type",
            "transformers_version",
            "id2label",
            "label2id",
            "problem_type",
            "tokenizer_class",
            "_commit_hash",
            "finetuning_task",
            "prefix",
            "task_specific_params",
            "custom_pipelines",
            "auto_map",
        )
    },
    **{
        name: inert("token ids: the tokenizer's business")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id")
    },
    **{
        name: inert("output and generation settings")
        for name in (
            "use_cache",
            "output_attentions",
            "output_hidden_states",
            "return_dict",
            "chunk_size_feed_forward",
            "max_length",
            "min_length",
            "num_beams",
            "do_sample",
            "temperature",
            "top_k",
            "top_p",
            "torchscript",
            "use_return_dict",
        )
    },
    "initializer_range": inert("initialisation only"),
    "dtype": inert("weights are computed in float32 whatever their stored dtype"),
    "torch_dtype": inert("weights are computed in float32 whatever their stored dtype"),
    "is_encoder_decoder": only(False),
    "is_decoder": inert("a decoder-only model is causal either way"),
    # transformers' causal mask turns bidirectional where a config says is_causal: false
    "is_causal": only(True),
    "add_cross_attention": only(False),
    "tie_encoder_decoder": only(False),
    "pruned_heads": only({}),
    "quantization_config": only(None),
}


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class ConfigReader:
    """transformers' config object for a checkpoint, read under a family's field table.

    `check()` refuses every field the table does not allow; `get` reads only declared fields, and only
    from the object's attributes (transformers' defaults included), never with a default of its own.
    """

    def __init__(self, family: str, config: Any, table: Mapping[str, Rule]) -> None:
        self.family = family
        self.config = config
        self.table = {**COMMON, **table}

    def check(self) -> None:
        for name, value in self.config.to_dict().items():
            rule = self.table.get(name)
            if rule is None:
                if not is_off(value):
                    self.refuse(name, value, "this field is not implemented")
            elif not rule.accepts(value):
                allowed = ", ".join(_show(v) for v in rule.values)
                self.refuse(name, value, f"only {allowed} is implemented")

    def refuse(self, name: str, value: object, why: str) -> NoReturn:
        raise UnsupportedConfig(
            f"{self.family} config field {name} = {_show(value)} is not supported ({why}): "
            "refusing rather than computing something else"
        )

    def get(self, name: str) -> Any:
        """The attribute `name` of transformers' config object; None where the object has none (a
        field its class does not define, absent from config.json)."""
        if name not in self.table:
            raise KeyError(f"{self.family} reads undeclared config field {name!r}")
        return getattr(self.config, name, None)

    def require(self, name: str) -> Any:
        value = self.get(name)
        if value is None:
            self.refuse(name, value, "the model needs a value")
        return value
