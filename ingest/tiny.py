"""A tiny GPT-2 with deterministic weights built in code: real shapes and vocabulary, no files, fast tests."""

from __future__ import annotations

import torch

from ingest.checkpoints import build
from ingest.model import HookedTransformer

TINY_GPT2_CONFIG: dict = {
    "model_type": "gpt2",
    "n_layer": 2,
    "n_embd": 32,
    "n_head": 4,
    "n_positions": 128,
    "vocab_size": 50257,
    "layer_norm_epsilon": 1e-5,
}


def tiny_gpt2_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Hugging Face GPT-2 tensor names and layouts, so the tiny model loads through the same converter."""
    gen = torch.Generator().manual_seed(seed)
    cfg = TINY_GPT2_CONFIG
    d, v, n = cfg["n_embd"], cfg["vocab_size"], cfg["n_positions"]

    def rand(*shape: int, std: float = 0.2, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * std + mean

    sd = {
        "wte.weight": rand(v, d),
        "wpe.weight": rand(n, d, std=0.1),
        "ln_f.weight": rand(d, std=0.1, mean=1.0),
        "ln_f.bias": rand(d, std=0.05),
    }
    for i in range(cfg["n_layer"]):
        p = f"h.{i}."
        sd.update(
            {
                p + "ln_1.weight": rand(d, std=0.1, mean=1.0),
                p + "ln_1.bias": rand(d, std=0.05),
                p + "attn.c_attn.weight": rand(d, 3 * d, std=0.4),
                p + "attn.c_attn.bias": rand(3 * d, std=0.05),
                p + "attn.c_proj.weight": rand(d, d),
                p + "attn.c_proj.bias": rand(d, std=0.05),
                p + "ln_2.weight": rand(d, std=0.1, mean=1.0),
                p + "ln_2.bias": rand(d, std=0.05),
                p + "mlp.c_fc.weight": rand(d, 4 * d),
                p + "mlp.c_fc.bias": rand(4 * d, std=0.05),
                p + "mlp.c_proj.weight": rand(4 * d, d),
                p + "mlp.c_proj.bias": rand(d, std=0.05),
            }
        )
    return sd


def tiny_gpt2(seed: int = 0) -> HookedTransformer:
    return build(TINY_GPT2_CONFIG, tiny_gpt2_state_dict(seed))
