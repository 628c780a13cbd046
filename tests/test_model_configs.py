"""Config strictness: every field transformers defines for a supported family is implemented or refused.

The field lists come from transformers' own config classes (test-only), so a field a family module
forgets to declare, or declares as accepted when it is not, fails here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ingest.errors import ModelNotFound
from ingest.families import FAMILIES, read_config
from ingest.families.fields import COMMON, UnsupportedConfig, is_off
from ingest.rotary import Rope

transformers = pytest.importorskip("transformers")


def transformers_fields(model_type: str) -> dict[str, object]:
    """Every field of transformers' config class for `model_type`, with its default value."""
    config_class = transformers.CONFIG_MAPPING[model_type]
    config = config_class()
    fields = {f.name: getattr(config, f.name, None) for f in dataclasses.fields(config_class)}
    fields.update(config.to_dict())
    return fields


def small_config(model_type: str) -> dict[str, object]:
    """transformers' default config for the family, shrunk, as save_pretrained writes it."""
    sizes = {
        "gpt2": {"n_layer": 2, "n_embd": 64, "n_head": 4},
        "gpt_neox": {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 96},
    }.get(
        model_type,
        {
            "num_hidden_layers": 2,
            "hidden_size": 64,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "intermediate_size": 96,
        },
    )
    return transformers.CONFIG_MAPPING[model_type](**sizes).to_dict()


def a_value_unlike(value: object) -> object:
    """A value that is neither `value` nor off."""
    if isinstance(value, bool):
        return not value if value is False else "something else"
    if isinstance(value, int | float):
        return value + 3 if value else 7
    return "something else"


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_every_transformers_field_is_implemented_or_refused(model_type: str) -> None:
    table = {**COMMON, **FAMILIES[model_type].fields}
    base = small_config(model_type)
    read_config(base)  # the family's own default config is accepted
    undeclared = []
    for name, default in transformers_fields(model_type).items():
        rule = table.get(name)
        if rule is None:
            undeclared.append(name)
            # undeclared: any value other than an off one must be refused, naming the field (by our
            # table, or by transformers' class where the value has the wrong type)
            with pytest.raises(UnsupportedConfig, match=rf"\b{name}\b"):
                read_config({**base, name: a_value_unlike(default)})
        elif rule.kind == "only":
            with pytest.raises(UnsupportedConfig, match=rf"\b{name}\b"):
                read_config({**base, name: a_value_unlike(rule.values[0])})
    # the only fields left undeclared are ones transformers leaves off by default
    assert all(is_off(transformers_fields(model_type)[n]) for n in undeclared), undeclared


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_an_unknown_field_is_refused_unless_off(model_type: str) -> None:
    base = small_config(model_type)
    with pytest.raises(UnsupportedConfig) as err:
        read_config({**base, "qk_layernorm": True})
    assert str(err.value).count("\n") == 0 and "qk_layernorm = True" in str(err.value)
    for off in (None, False, 0, [], {}):
        read_config({**base, "qk_layernorm": off})


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_a_bidirectional_config_is_refused(model_type: str) -> None:
    """transformers' causal mask attends both ways where a config says is_causal: false (masking_utils),
    though the field is no config class's: refused, however off its value looks."""
    with pytest.raises(UnsupportedConfig, match="is_causal = False"):
        read_config({**small_config(model_type), "is_causal": False})
    read_config({**small_config(model_type), "is_causal": True})


def test_an_unsupported_model_type_names_the_supported_ones() -> None:
    with pytest.raises(ModelNotFound, match="model_type 'mamba' is not supported: supported families are .*llama"):
        read_config({"model_type": "mamba"})


def _rope(config: dict) -> Rope:
    cfg, _ = read_config(config)
    assert cfg.rope is not None
    return cfg.rope


def test_rope_settings_read_from_either_layout() -> None:
    base = small_config("llama")
    del base["rope_parameters"]
    llama3 = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    new = _rope({**base, "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, **llama3}})
    old = _rope({**base, "rope_theta": 500000.0, "rope_scaling": {"type": "llama3", **llama3}})
    assert new == old
    assert new.theta == 500000.0 and new.kind == "llama3"
    # transformers 5's own saved layout, with the theta only inside rope_parameters
    saved = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, rope_theta=500000.0).to_dict()
    assert "rope_theta" not in saved and _rope(saved).theta == 500000.0


_LONGROPE = {"short_factor": [1.0] * 8, "long_factor": [2.0] * 8, "original_max_position_embeddings": 64}


@pytest.mark.parametrize(
    ("rope", "field"),
    [
        ({"rope_type": "dynamic", "factor": 2.0}, "rope_parameters.rope_type = 'dynamic'"),
        ({"rope_type": "longrope", **_LONGROPE}, "rope_parameters.rope_type = 'longrope'"),
        ({"rope_type": "llama3", "factor": 8.0}, "high_freq_factor"),
        ({"rope_type": "no-such-rope"}, "rope_parameters = "),
        # Llama's attention rotates whole heads: frequencies for half of them cannot be applied
        ({"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5}, "partial_rotary_factor = 0.5"),
    ],
)
def test_unsupported_rope_settings_are_refused(rope: dict, field: str) -> None:
    base = small_config("llama")
    with pytest.raises(UnsupportedConfig, match=field.replace(".", r"\.")) as err:
        read_config({**base, "rope_parameters": rope})
    assert "\n" not in str(err.value)


def test_gpt_neox_reads_its_legacy_rotary_fields() -> None:
    base = small_config("gpt_neox")
    del base["rope_parameters"]
    rope = _rope({**base, "rotary_pct": 0.5, "rotary_emb_base": 20000})
    assert (rope.theta, rope.rotary_dim) == (20000.0, 8)
    assert _rope(base).rotary_dim == 4  # a quarter of 16 channels when nothing says otherwise


def _gguf(path: Path, extra: dict[str, float]) -> Path:
    """A llama GGUF holding metadata only (the config is read and checked before any tensor)."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(16)
    writer.add_feed_forward_length(32)
    writer.add_head_count(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(32)
    for key, value in extra.items():
        writer.add_float32(key, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_metadata_the_reader_does_not_implement_is_refused(tmp_path: Path) -> None:
    from ingest.gguf import load_gguf

    config, _ = load_gguf(_gguf(tmp_path / "plain.gguf", {}))
    assert config["hidden_size"] == 16
    with pytest.raises(UnsupportedConfig, match=r"GGUF metadata llama\.rope\.scaling\.factor = 8\.0 is not supported"):
        load_gguf(_gguf(tmp_path / "scaled.gguf", {"llama.rope.scaling.factor": 8.0}))
