"""Small transformers checkpoints whose every parameter is random, so that a mapping bug shows.

transformers initialises every bias to 0, every norm gain to 1 (0 where the gain is stored as 1 + w) and
the projections so small that attention is nearly uniform: swapped biases, a dropped gain or a wrong
head order would all pass a parity test on such a model. After init, every parameter is redrawn here:
gains spread around their identity, biases non-zero, projections large enough that attention is peaked.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import torch
from torch import nn

VOCAB = 512  # small: the parity tests pass ids, not text
TEXTS = tuple(
    f"The capital of {c} is {city}."
    for c, city in [("France", "Paris"), ("England", "London"), ("Germany", "Berlin"), ("Italy", "Rome")]
)


# Small configs (2 layers, d_model 64) for the families, in transformers keyword arguments. Norm epsilons
# are large (0.25, against mean squares near 1), so a dropped or changed epsilon fails by far more than
# the parity tolerance rather than by 1e-5.
NORM_EPS = 0.25
SMALL_GPT2 = {
    "n_layer": 2,
    "n_embd": 64,
    "n_head": 4,
    "n_positions": 128,
    "vocab_size": VOCAB,
    "tie_word_embeddings": False,
    "bos_token_id": 0,
    "eos_token_id": 0,
    "layer_norm_epsilon": NORM_EPS,
}

SMALL_LLAMA = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": VOCAB,
    "max_position_embeddings": 1024,
    "rms_norm_eps": NORM_EPS,
    "tie_word_embeddings": False,
}

SMALL_NEOX = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "vocab_size": VOCAB,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": False,
    "layer_norm_eps": NORM_EPS,
}


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")


@torch.no_grad()
def randomise(model: nn.Module, seed: int = 0, projection_gain: float = 1.5) -> nn.Module:
    """Redraw every parameter of `model` in place; returns it, in eval mode."""
    gen = torch.Generator().manual_seed(seed)

    def normal(shape: torch.Size, std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * std + mean

    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if _is_norm(module) and name == "weight":
                # around the identity gain, whichever way the family stores it (1, or 0 for 1 + w)
                param.copy_(normal(param.shape, 0.3, float(param.mean())))
            elif param.ndim == 1:
                param.copy_(normal(param.shape, 0.3))
            elif isinstance(module, nn.Embedding):
                param.copy_(normal(param.shape, 1.0))
            else:
                # nn.Linear stores (out, in); GPT-2's Conv1D (in, out): either way the smaller side is d_model
                fan_in = param.shape[1] if isinstance(module, nn.Linear) else param.shape[0]
                param.copy_(normal(param.shape, projection_gain / math.sqrt(fan_in)))
    return model.eval()


def build(config: object, seed: int = 0) -> nn.Module:
    """The causal LM for a transformers config, eager attention, every parameter random."""
    from transformers import AutoModelForCausalLM

    config._attn_implementation = "eager"  # type: ignore[attr-defined]
    torch.manual_seed(seed)
    return randomise(AutoModelForCausalLM.from_config(config), seed)


def save(model: nn.Module, path: Path) -> Path:
    model.save_pretrained(path)
    return path


def prompts(lengths: tuple[int, ...], vocab: int = VOCAB, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(n)] for n in lengths]


def rewrite_rope_as_legacy(path: Path) -> None:
    """Rewrite a saved config.json the way transformers 4 wrote it: `rope_theta` at the top level and the
    scaling in `rope_scaling` under `type`."""
    config_file = path / "config.json"
    config = json.loads(config_file.read_text())
    rope = dict(config.pop("rope_parameters"))
    config["rope_theta"] = rope.pop("rope_theta")
    kind = rope.pop("rope_type")
    config["rope_scaling"] = None if kind == "default" else {"type": kind, **rope}
    config_file.write_text(json.dumps(config))


def byte_level_tokenizer(
    directory: Path, add_bos_token: bool | None = None, template: bool = False, texts: tuple[str, ...] = TEXTS
) -> None:
    """A small trained byte-level BPE tokenizer.json with <s> and </s>, and its tokenizer_config.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(list(texts) * 20, trainer)
    if template:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok.save(str(directory / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": {"content": "</s>", "special": True}}
    if add_bos_token is not None:
        config["add_bos_token"] = add_bos_token
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


def checkpoint_with_tokenizer(config_class: str, kwargs: dict, path: Path, seed: int = 0) -> Path:
    """A random checkpoint directory with a small byte-level tokenizer that spells ' Paris', ' London',
    ' Rome' and ' Berlin' as one token each."""
    import transformers

    save(build(getattr(transformers, config_class)(**kwargs), seed), path)
    byte_level_tokenizer(path)
    return path
