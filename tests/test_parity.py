"""Every location of the hooked model equals Hugging Face transformers on the same random checkpoint.

Each case is a small checkpoint built and saved by transformers with every parameter random (tests/
random_models.py), loaded through the product's checkpoint reader. Prompts of mixed lengths run as one
padded batch on our side and one by one on transformers' side. Every (location, layer, pass) the
registry defines must be compared: forward values within FORWARD_TOL x max|ref|, gradients within
GRADIENT_TOL x max|ref| (tests/parity.py), per prompt, location and layer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from tests import random_models
from tests.parity import assert_parity

transformers = pytest.importorskip("transformers")

LENGTHS = (67, 23, 5, 2)  # one batch: padding, short and long prompts side by side
TARGET, DISTRACTOR = 7, 11


@dataclass(frozen=True)
class Case:
    """A transformers config class and keyword arguments; the first prompt gets `first_length` tokens."""

    config: str
    kwargs: dict = field(default_factory=dict)
    first_length: int = LENGTHS[0]
    legacy_layout: bool = False  # config.json rewritten as transformers 4 wrote it (rope_theta, rope_scaling)
    gain_scale: dict[str, float] = field(default_factory=dict)  # parameters named ...<key>.weight, times value
    absent: tuple[str, ...] = ()  # keys taken out of the saved config.json (transformers' class default applies)


LONG = 530  # rotary scalings differ most at positions past the original context; test past 500


_LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
_YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}

_OLMO2 = {**random_models.SMALL_LLAMA, "pad_token_id": 0, "eos_token_id": 0}
_OLMO2_QK = {"q_norm": 2.0, "k_norm": 2.0}

CASES: dict[str, Case] = {
    "gpt2": Case("GPT2Config", random_models.SMALL_GPT2),
    "llama": Case("LlamaConfig", {**random_models.SMALL_LLAMA, "rope_theta": 500000.0}),
    "llama-biases-head_dim-tied": Case(
        "LlamaConfig",
        {
            **random_models.SMALL_LLAMA,
            "attention_bias": True,
            "mlp_bias": True,
            "head_dim": 24,
            "tie_word_embeddings": True,
        },
    ),
    "llama-rope-linear": Case(
        "LlamaConfig", {**random_models.SMALL_LLAMA, "rope_parameters": {"rope_type": "linear", "factor": 4.0}}, LONG
    ),
    "llama-rope-llama3": Case(
        "LlamaConfig",
        {
            **random_models.SMALL_LLAMA,
            "rope_parameters": {**_LLAMA3, "rope_theta": 500000.0, "original_max_position_embeddings": 64},
        },
        LONG,
    ),
    "llama-rope-llama3-legacy-layout": Case(
        "LlamaConfig",
        {
            **random_models.SMALL_LLAMA,
            "rope_parameters": {**_LLAMA3, "rope_theta": 500000.0, "original_max_position_embeddings": 64},
        },
        LONG,
        legacy_layout=True,
    ),
    "llama-rope-yarn": Case("LlamaConfig", {**random_models.SMALL_LLAMA, "rope_parameters": _YARN}, LONG),
    "llama-rope-default-long": Case("LlamaConfig", {**random_models.SMALL_LLAMA, "rope_theta": 10000.0}, LONG),
    "mistral": Case("MistralConfig", {**random_models.SMALL_LLAMA, "sliding_window": 16, "head_dim": 8}),
    "qwen2": Case(
        "Qwen2Config",
        {**random_models.SMALL_LLAMA, "use_sliding_window": True, "sliding_window": 16, "max_window_layers": 1},
    ),
    "gpt_neox": Case("GPTNeoXConfig", random_models.SMALL_NEOX),
    "gpt_neox-sequential-full-rotary": Case(
        "GPTNeoXConfig",
        {
            **random_models.SMALL_NEOX,
            "use_parallel_residual": False,
            "rope_parameters": {"rope_type": "default", "partial_rotary_factor": 1.0},
        },
    ),
    "gemma": Case("GemmaConfig", {**random_models.SMALL_LLAMA, "head_dim": 16, "tie_word_embeddings": True}),
    "gemma2": Case(
        "Gemma2Config",
        {
            **random_models.SMALL_LLAMA,
            "head_dim": 16,
            "tie_word_embeddings": True,
            "sliding_window": 16,
            "query_pre_attn_scalar": 24,
            "attn_logit_softcapping": 5.0,
            "final_logit_softcapping": 3.0,
        },
    ),
    "qwen3": Case(
        "Qwen3Config",
        {
            **random_models.SMALL_LLAMA,
            "head_dim": 16,
            "attention_bias": True,
            "use_sliding_window": True,
            "sliding_window": 16,
            "max_window_layers": 1,
        },
    ),
    # queries and keys are normed, so their gains alone set how peaked attention can be: scaled up
    "olmo2": Case("Olmo2Config", _OLMO2, gain_scale=_OLMO2_QK),
    "olmo2-attention-bias-tied": Case(
        "Olmo2Config", {**_OLMO2, "attention_bias": True, "tie_word_embeddings": True}, gain_scale=_OLMO2_QK
    ),
    # config.json without rms_norm_eps: OLMo 2's class default (1e-5) applies. Embeddings of 1e-3 make the
    # post-block norms read values whose mean square is near the epsilon, so another epsilon shows
    "olmo2-eps-absent-small-embedding": Case(
        "Olmo2Config",
        {k: v for k, v in _OLMO2.items() if k != "rms_norm_eps"},
        gain_scale={**_OLMO2_QK, "embed_tokens": 1e-3},
        absent=("rms_norm_eps",),
    ),
    # Llama's default rope never reads partial_rotary_factor: every channel of each head rotates
    "llama-partial_rotary_factor-ignored": Case(
        "LlamaConfig",
        {**random_models.SMALL_LLAMA, "rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}},
    ),
    "phi3": Case("Phi3Config", {**random_models.SMALL_LLAMA, "pad_token_id": 0, "eos_token_id": 0, "bos_token_id": 0}),
    "phi3-partial-rotary-window": Case(
        "Phi3Config",
        {
            **random_models.SMALL_LLAMA,
            "pad_token_id": 0,
            "eos_token_id": 0,
            "bos_token_id": 0,
            "sliding_window": 16,
            "rope_parameters": {"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.5},
        },
    ),
    "gemma2-biases-layer_types-caps": Case(
        "Gemma2Config",
        {
            **random_models.SMALL_LLAMA,
            "head_dim": 16,
            "tie_word_embeddings": False,
            "attention_bias": True,
            "sliding_window": 4,
            "layer_types": ["full_attention", "sliding_attention"],
            "query_pre_attn_scalar": 16,
            "attn_logit_softcapping": 10.0,
            "final_logit_softcapping": 20.0,
        },
    ),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[torch.nn.Module, Path]]:
    """Built lazily, once per case."""
    return {}


def checkpoint(cache: dict, name: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    if name not in cache:
        case = CASES[name]
        hf = random_models.build(getattr(transformers, case.config)(**case.kwargs))
        with torch.no_grad():
            for param_name, param in hf.named_parameters():
                for key, factor in case.gain_scale.items():
                    if param_name.endswith(f"{key}.weight"):
                        param.mul_(factor)
        path = random_models.save(hf, tmp_path_factory.mktemp(name))
        if case.legacy_layout:
            random_models.rewrite_rope_as_legacy(path)
        if case.absent:
            saved = json.loads((path / "config.json").read_text())
            (path / "config.json").write_text(json.dumps({k: v for k, v in saved.items() if k not in case.absent}))
        cache[name] = (hf, path)
    return cache[name]


def load_ours(path: Path):  # noqa: ANN201
    from ingest import checkpoints

    return checkpoints.build(*checkpoints.read_hf_dir(path))


def attention_is_peaked(hf: torch.nn.Module, prompt: list[int]) -> float:
    """Mean over queries past the fifth, heads and layers of the largest attention probability, over the
    uniform 1/(q+1): far above 1 when attention is far from uniform."""
    with torch.no_grad():
        out = hf(torch.tensor([prompt]), output_attentions=True, use_cache=False)
    ratios = []
    for att in out.attentions:  # (1, heads, query, key)
        counts = torch.arange(1, att.shape[-1] + 1, dtype=torch.float32)
        ratios.append((att[0].amax(-1) * counts)[:, 5:].mean())
    return float(torch.stack(ratios).mean())


@pytest.mark.parametrize("objective", ["logit_diff", "next_token_ce"])
@pytest.mark.parametrize("name", list(CASES))
def test_every_location_matches_transformers(
    name: str, objective: str, checkpoints: dict, tmp_path_factory: pytest.TempPathFactory
) -> None:
    hf, path = checkpoint(checkpoints, name, tmp_path_factory)
    lengths = (CASES[name].first_length, *LENGTHS[1:])
    prompts = random_models.prompts(lengths)
    target, distractor = (TARGET, DISTRACTOR) if objective == "logit_diff" else (None, None)
    assert attention_is_peaked(hf, prompts[0]) > 4.0, "attention too close to uniform for parity to mean much"
    assert_parity(hf, load_ours(path), prompts, target, distractor)
