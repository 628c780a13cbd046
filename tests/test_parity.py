"""Every location of the hooked model equals Hugging Face transformers on the same random checkpoint.

Each case is a small checkpoint built and saved by transformers with every parameter random (tests/
random_models.py), loaded through the product's checkpoint reader. Prompts of mixed lengths run as one
padded batch on our side and one by one on transformers' side. Every (location, layer, pass) the
registry defines must be compared: forward values within FORWARD_TOL x max|ref|, gradients within
GRADIENT_TOL x max|ref| (tests/parity.py), per prompt, location and layer.
"""

from __future__ import annotations

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


_SMALL_LLAMA = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": random_models.VOCAB,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}

CASES: dict[str, Case] = {
    "gpt2": Case(
        "GPT2Config",
        {
            "n_layer": 2,
            "n_embd": 64,
            "n_head": 4,
            "n_positions": 128,
            "vocab_size": random_models.VOCAB,
            "tie_word_embeddings": False,
            "bos_token_id": 0,
            "eos_token_id": 0,
        },
    ),
    "llama": Case("LlamaConfig", {**_SMALL_LLAMA, "rope_theta": 500000.0}),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[torch.nn.Module, Path]]:
    """Built lazily, once per case."""
    return {}


def checkpoint(cache: dict, name: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    if name not in cache:
        case = CASES[name]
        hf = random_models.build(getattr(transformers, case.config)(**case.kwargs))
        cache[name] = (hf, random_models.save(hf, tmp_path_factory.mktemp(name)))
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
