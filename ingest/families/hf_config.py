"""A checkpoint's config.json read by transformers' own config class for its model_type.

What a checkpoint computes is what transformers computes from that file: the class's default where a
key is absent, its precedence where two spellings or two rope layouts are present (`rope_parameters`
or `rope_theta` with `rope_scaling`, GPT-2's `hidden_size` or `n_embd`, GPT-NeoX's `rotary_pct` or
`partial_rotary_factor`), its normalisation of rope settings and its own corrections (Gemma's legacy
`gelu`, Qwen2's window dropped without `use_sliding_window`). So the families never read the raw dict:
they read the attributes of the object this module returns. transformers is imported here, on the
first checkpoint read, so commands that only query a warehouse never pay for the import.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ingest.families.fields import UnsupportedConfig


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' own warnings (an unrecognised rope key, a legacy spelling) are not the user's
    business here: what the checkpoint computes is checked field by field after parsing."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def parse(model_type: str, config: Mapping[str, object]) -> Any:
    """transformers' config object (a PretrainedConfig subclass) for a config.json dict, built by
    `AutoConfig.from_pretrained` from the dict written as a config.json: its choice of class included
    (a mistral config.json with `layer_types` is read as ministral, for one).

    Raises UnsupportedConfig, in one line, where transformers rejects the file (a wrong type, a rope
    type without its required keys, an invalid combination) or reads it as another model_type.
    """
    with quiet_transformers(), tempfile.TemporaryDirectory() as directory:
        from transformers import AutoConfig

        (Path(directory) / "config.json").write_text(json.dumps(dict(config)))
        try:
            # never custom code (an auto_map): transformers' own class for the model_type, and no prompt
            parsed = AutoConfig.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
        except Exception as err:  # noqa: BLE001 - any rejection by transformers is reported as one line
            why = " ".join(str(err).split()) or type(err).__name__
            raise UnsupportedConfig(
                f"{model_type} config.json is rejected by transformers ({why[:300]}): "
                "refusing rather than guessing what it means"
            ) from None
    if parsed.model_type != model_type:
        raise UnsupportedConfig(
            f"transformers reads this {model_type} config.json as model_type {parsed.model_type!r}, "
            "which is not supported: refusing rather than computing something else"
        )
    return parsed
