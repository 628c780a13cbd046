"""Our reading of a config.json against transformers' own, for every supported family.

For each family: the config transformers writes (at small sizes), the same with each field left out in
turn (transformers' class default applies), with both rope layouts and every implemented rope type in
each (and both at once, with conflicting values), with both spellings where a family has two, and with
fields the family's model ignores (a `partial_rotary_factor` for a family whose default rope never
reads it, Gemma 2's `hidden_act`, Gemma's `hidden_activation`).

transformers' side is read from its own objects only: `AutoConfig.from_pretrained` on the written
file, the causal LM built from it on the meta device (no weights), and from that model: every norm's
epsilon, the attention modules' head size, scaling, soft cap and sliding window, the key/value heads,
the MLP's activation (applied to a probe), the tie, the parallel residual, and its rotary embedding
applied to a probe query by the family's own `apply_rotary_pos_emb`. Our side: `read_config`, and
our `build` on the model's (meta) state dict, as save_pretrained writes it, which checks every
tensor's name and shape (so the biases present) against our reading. Where transformers cannot run a
config, ours must refuse it in one line. No forward pass: the whole sweep is configs and modules.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ingest import checkpoints
from ingest.errors import ModelNotFound
from ingest.families import FAMILIES, read_config
from ingest.model import ACTIVATIONS, HookedTransformer
from ingest.rotary import rotate

transformers = pytest.importorskip("transformers")

VOCAB = 96
TOKENS = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}  # within the small vocabulary
SIZES: dict[str, dict[str, object]] = {
    "gpt2": {"n_layer": 2, "n_embd": 32, "n_head": 4, "n_positions": 64, "vocab_size": VOCAB},
    "gpt_neox": {
        "num_hidden_layers": 2,
        "hidden_size": 32,
        "num_attention_heads": 2,
        "intermediate_size": 48,
        "max_position_embeddings": 64,
        "vocab_size": VOCAB,
    },
}
LLAMA_SIZES = {
    "num_hidden_layers": 2,
    "hidden_size": 32,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "intermediate_size": 48,
    "max_position_embeddings": 64,
    "vocab_size": VOCAB,
}
# fields that only size the model: left out together in one variant (transformers' defaults are large)
SIZE_FIELDS = {"hidden_size", "intermediate_size", "num_attention_heads", "n_embd", "n_head", "n_inner"}
_LAYERS = {"num_hidden_layers", "n_layer"}  # kept: a default depth (32 layers) only slows the sweep

ROPES: dict[str, dict[str, object]] = {
    "default": {"rope_type": "default", "rope_theta": 500.0},
    "linear": {"rope_type": "linear", "factor": 4.0, "rope_theta": 500.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
        "rope_theta": 500000.0,
    },
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
    "yarn-mscale": {
        "rope_type": "yarn",
        "factor": 4.0,
        "beta_fast": 16.0,
        "mscale": 1.0,
        "mscale_all_dim": 0.5,
        "truncate": False,
        "original_max_position_embeddings": 16,
    },
    "default-partial": {"rope_type": "default", "partial_rotary_factor": 0.5},
    "linear-partial": {"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5},
}


@dataclass(frozen=True)
class Variant:
    name: str
    config: dict
    may_refuse: bool = False  # a field our table does not implement: a one-line refusal is allowed


def saved_config(model_type: str) -> dict:
    """transformers' config for the family at small sizes, every field written out."""
    sizes = SIZES.get(model_type, LLAMA_SIZES)
    return transformers.CONFIG_MAPPING[model_type](**sizes, **TOKENS).to_dict()


def _legacy(config: dict, rope: dict) -> dict:
    """`rope` in transformers 4's layout: rope_theta and partial_rotary_factor at the top level, the
    scaling in rope_scaling under `type`."""
    out = {k: v for k, v in config.items() if k != "rope_parameters"}
    rope = dict(rope)
    kind = rope.pop("rope_type")
    for key in ("rope_theta", "partial_rotary_factor"):
        if key in rope:
            out[key] = rope.pop(key)
    out["rope_scaling"] = {"type": kind, **rope} if kind != "default" else None
    return out


def variants(model_type: str) -> list[Variant]:
    base = saved_config(model_type)
    table = FAMILIES[model_type].fields
    out = [Variant("as saved", base)]
    for key in sorted(base):
        if key in table and key not in SIZE_FIELDS | _LAYERS:
            out.append(Variant(f"without {key}", {k: v for k, v in base.items() if k != key}))
    out.append(Variant("without sizes", {k: v for k, v in base.items() if k not in SIZE_FIELDS}))
    if "rope_parameters" in base:
        for name, rope in ROPES.items():
            out.append(Variant(f"rope_parameters {name}", {**base, "rope_parameters": copy.deepcopy(rope)}))
            out.append(Variant(f"legacy rope {name}", _legacy(base, rope)))
        for name in ("default", "yarn", "default-partial"):
            # both layouts at once, disagreeing: transformers' precedence decides
            both = {**base, "rope_parameters": copy.deepcopy(ROPES[name]), "rope_theta": 20000.0}
            out.append(Variant(f"both thetas {name}", both))
            out.append(Variant(f"both layouts {name}", {**both, "rope_scaling": {"type": "linear", "factor": 3.0}}))
        out.append(Variant("top-level partial_rotary_factor", {**base, "partial_rotary_factor": 0.5}))
    out += [
        Variant(f"{model_type}: {name}", {**base, **extra}, may) for name, extra, may in SPELLINGS.get(model_type, [])
    ]
    return out


_WINDOWED = [
    ("window 8", {"sliding_window": 8}, False),
    ("no window", {"sliding_window": None}, False),
    # transformers reads a mistral config.json with layer_types as ministral, which we do not implement
    ("layer_types", {"sliding_window": 8, "layer_types": ["full_attention"] * 2}, True),
]
_QWEN = [
    ("use_sliding_window off, window set", {"use_sliding_window": False, "sliding_window": 8}, False),
    (
        "use_sliding_window, max_window_layers",
        {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1},
        False,
    ),
    (
        "layer_types over max_window_layers",
        {
            "use_sliding_window": True,
            "sliding_window": 8,
            "max_window_layers": 1,
            "layer_types": ["sliding_attention", "full_attention"],
        },
        False,
    ),
    ("sliding layer_types without a window", {"layer_types": ["sliding_attention", "full_attention"]}, False),
]
# Both spellings, and fields the family's model ignores
SPELLINGS: dict[str, list[tuple[str, dict, bool]]] = {
    "gpt2": [
        ("hidden_size for n_embd", {"hidden_size": 48}, False),
        ("n_ctx beside n_positions", {"n_ctx": 128}, False),
        ("n_inner", {"n_inner": 40}, False),
    ],
    "gpt_neox": [
        (
            "legacy rotary_pct, rotary_emb_base",
            {"rope_parameters": None, "rotary_pct": 0.5, "rotary_emb_base": 20000},
            False,
        ),
        (
            "rotary_pct beside rope_parameters",
            {"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 1.0}, "rotary_pct": 0.5},
            False,
        ),
        ("sequential residual", {"use_parallel_residual": False}, False),
    ],
    "gemma": [
        ("legacy gelu", {"hidden_act": "gelu"}, False),
        ("hidden_activation, which the model ignores", {"hidden_activation": "relu"}, False),
    ],
    "gemma2": [
        ("hidden_act, which the model ignores", {"hidden_act": "relu"}, False),
        ("no soft caps", {"attn_logit_softcapping": None, "final_logit_softcapping": None}, False),
        ("layer_types", {"sliding_window": 8, "layer_types": ["full_attention", "sliding_attention"]}, False),
    ],
    "llama": [
        ("biases, head_dim", {"attention_bias": True, "mlp_bias": True, "head_dim": 16}, False),
        ("sliding_window, which Llama does not implement", {"sliding_window": 8}, True),
    ],
    "mistral": _WINDOWED,
    "phi3": _WINDOWED,
    "qwen2": [*_QWEN, ("head_dim", {"head_dim": 16}, False)],
    "qwen3": _QWEN,
    "olmo2": [("attention_bias", {"attention_bias": True}, False)],
}


# --- transformers' side ---


def transformers_model(config: dict, tmp_path: Path) -> torch.nn.Module | None:
    """The causal LM transformers builds from `config` written as config.json, on the meta device; None
    where transformers rejects the config or cannot build the model."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config))
    try:
        parsed = transformers.AutoConfig.from_pretrained(tmp_path)
        parsed._attn_implementation = "eager"
        with torch.device("meta"):
            return transformers.AutoModelForCausalLM.from_config(parsed)
    except Exception:  # noqa: BLE001 - transformers cannot run it: ours must refuse
        return None


def _layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    return next(m for m in model.base_model.children() if isinstance(m, torch.nn.ModuleList))


def _attention(layer: torch.nn.Module) -> torch.nn.Module:
    return next(m for name, m in layer.named_children() if name in ("self_attn", "attention", "attn"))


def _mlp_activation(layer: torch.nn.Module) -> torch.nn.Module:
    return next(getattr(layer.mlp, n) for n in ("act_fn", "act", "activation_fn") if hasattr(layer.mlp, n))


def _uses(model: torch.nn.Module, name: str) -> bool:
    """Whether the family's modeling source (transformers' own) mentions `name` at all."""
    return name in _source(type(model).__module__)


@functools.cache
def _source(module: str) -> str:
    return inspect.getsource(sys.modules[module])


def _rope_probe(model: torch.nn.Module, d_head: int) -> torch.Tensor | None:
    """A probe query (1 head, 600 positions) rotated by the family's own rotary embedding and
    apply_rotary_pos_emb; None where they fail on it."""
    rotary = getattr(model.base_model, "rotary_emb", None)
    if rotary is None:
        return None
    q = _probe(d_head)
    try:
        cpu_rotary = type(rotary)(model.config)
        cos, sin = cpu_rotary(q, torch.arange(q.shape[2])[None])
        rotated, _ = sys.modules[type(model).__module__].apply_rotary_pos_emb(q, q, cos, sin)
    except Exception:  # noqa: BLE001
        return None
    return rotated


def _probe(d_head: int) -> torch.Tensor:
    return torch.randn((1, 1, 600, d_head), generator=torch.Generator().manual_seed(0))


def theirs(model: torch.nn.Module) -> dict | None:
    """What transformers' model computes, as the fields we compare; None where it cannot run."""
    config = model.config
    layers = _layers(model)
    attention = [_attention(layer) for layer in layers]
    d_head = getattr(attention[0], "head_dim", None) or attention[0].head_size
    n_heads = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", n_heads)
    if n_kv > n_heads or n_heads % n_kv:
        return None  # repeat_kv cannot share key/value heads among the query heads
    sliding_masks = _uses(model, "create_sliding_window_causal_mask")
    windows = []
    for attn in attention:
        # Qwen2, Qwen3, Gemma 2 keep the window per layer; Mistral and Phi-3 mask every layer by the config's
        window = getattr(attn, "sliding_window", config.sliding_window if sliding_masks else None)
        windows.append(window if sliding_masks else None)
    if (
        sliding_masks
        and config.sliding_window is None
        and "sliding_attention" in (getattr(config, "layer_types", None) or [])
    ):
        return None  # the sliding mask raises without a window
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm) or type(m).__name__.endswith("RMSNorm")]
    rope = _rope_probe(model, d_head)
    if getattr(model.base_model, "rotary_emb", None) is not None and rope is None:
        return None
    x = torch.linspace(-4, 4, 101)
    return {
        "n_layers": len(layers),
        "d_model": model.get_input_embeddings().weight.shape[1],
        "n_heads": n_heads,
        "n_kv_heads": n_kv,
        "d_head": d_head,
        "vocab_size": model.get_input_embeddings().weight.shape[0],
        "n_ctx": config.max_position_embeddings,
        "norm": {"layernorm" if isinstance(m, torch.nn.LayerNorm) else "rmsnorm" for m in norms},
        "norm_eps": {float(getattr(m, "variance_epsilon", None) or m.eps) for m in norms},
        "activation": _mlp_activation(layers[0])(x),
        "parallel_residual": bool(getattr(layers[0], "use_parallel_residual", False)),
        "attn_scale": {float(a.scaling) for a in attention},
        "attn_logit_softcap": {getattr(a, "attn_logit_softcapping", None) for a in attention},
        "final_logit_softcap": config.final_logit_softcapping if _uses(model, "final_logit_softcapping") else None,
        "sliding_windows": tuple(windows) if any(w is not None for w in windows) else (),
        "tied": model.get_output_embeddings().weight is model.get_input_embeddings().weight,
        "rope": rope,
    }


# --- our side ---


def saved_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's (meta) tensors as save_pretrained writes them (transformers' own steps: tied weights
    left out, its renamings reverted). The embedding is a real CPU tensor, so our unembedding shows where
    it came from (CPU: the embedding; meta: the head)."""
    from transformers.core_model_loading import revert_weight_conversion
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    embedding = model.get_input_embeddings().weight
    state = remove_tied_weights_from_state_dict(model.state_dict(keep_vars=True), model)
    state = revert_weight_conversion(model, state)
    return {name: torch.zeros(t.shape) if t is embedding else t.detach() for name, t in state.items()}


def ours(built: HookedTransformer) -> dict:
    config = built.config
    x = torch.linspace(-4, 4, 101)
    rope = None
    if config.rope is not None:
        q = _probe(config.d_head).transpose(1, 2)  # (batch, tokens, heads, channels)
        rope = rotate(q, config.rope, config.rope.frequencies()).transpose(1, 2)
    return {
        "n_layers": config.n_layers,
        "d_model": config.d_model,
        "n_heads": config.n_heads,
        "n_kv_heads": config.n_kv_heads,
        "d_head": config.d_head,
        "vocab_size": config.vocab_size,
        "n_ctx": config.n_ctx,
        "norm": {config.norm},
        "norm_eps": {config.norm_eps},
        "activation": ACTIVATIONS[config.activation](x),
        "parallel_residual": config.parallel_residual,
        "attn_scale": {config.attn_scale if config.attn_scale is not None else config.d_head**-0.5},
        "attn_logit_softcap": {config.attn_logit_softcap},
        "final_logit_softcap": config.final_logit_softcap,
        "sliding_windows": config.sliding_windows,
        "tied": built.weights[("unembedding", None)].device.type == "cpu",
        "rope": rope,
    }


def _differ(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape != b.shape or not torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    if isinstance(a, set) and isinstance(b, set) and all(isinstance(v, float) for v in a | b):
        return len(a) != len(b) or any(abs(x - y) > 1e-9 * abs(y) for x, y in zip(sorted(a), sorted(b), strict=True))
    return a != b


def _one_line_refusal(err: ModelNotFound, variant: Variant) -> None:
    assert "\n" not in str(err), f"{variant.name}: {err}"


def check(variant: Variant, tmp_path: Path) -> str | None:
    """None when our reading of the variant equals transformers'; else what differs."""
    model = transformers_model(variant.config, tmp_path)
    expected = theirs(model) if model is not None else None
    if expected is None:
        try:
            read_config(variant.config)
        except ModelNotFound as err:
            _one_line_refusal(err, variant)
            return None
        return "accepted, but transformers cannot run it"
    try:
        # our reading, and our model built on transformers' tensors (names and shapes checked)
        built = checkpoints.build(variant.config, saved_state_dict(model))
    except ModelNotFound as err:
        _one_line_refusal(err, variant)
        return None if variant.may_refuse else f"refused ({err}) but transformers runs it"
    except ValueError as err:
        return f"our model does not take transformers' tensors: {err}"
    got = ours(built)
    diffs = [f"{k}: ours {got[k]!r} != transformers' {expected[k]!r}" for k in expected if _differ(got[k], expected[k])]
    return "; ".join(diffs) or None


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_our_reading_of_every_config_variant_is_transformers(model_type: str, tmp_path: Path) -> None:
    problems = []
    for i, variant in enumerate(variants(model_type)):
        problem = check(variant, tmp_path / str(i))
        if problem:
            problems.append(f"{variant.name}: {problem}")
    assert not problems, "\n".join(problems)


def test_the_sweep_covers_what_the_issue_names() -> None:
    """Absent keys, both layouts, ignored fields: the sweep holds them for every rotary family."""
    names = {v.name for v in variants("olmo2")}
    assert {"without rms_norm_eps", "rope_parameters default-partial", "legacy rope yarn", "both layouts yarn"} <= names
    assert any(v.may_refuse is False and "partial_rotary_factor" in json.dumps(v.config) for v in variants("llama"))
