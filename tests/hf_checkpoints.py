"""Small random-weight checkpoints built with Hugging Face transformers, saved as a user would save them.

Every parameter is redrawn after transformers' initialisation, which leaves biases at 0, gains at 1 and
attention nearly uniform: bugs that zero a bias, reset a gain, swap two tensors or mis-map heads would
not show there. Here biases are non-zero, gains spread around 1, the unembedding is untied from the
embedding and query/key weights are large enough that attention is far from uniform.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# Words the Llama test tokenizer learns as single tokens, so they can serve as targets and distractors.
LLAMA_TARGETS = (" Paris", " London", " Rome", " Berlin", " Mary", " John")
_CORPUS = [
    "The capital of France is Paris, the capital of England is London.",
    "Rome and Berlin are capitals; Paris and London are too.",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "the quick brown fox jumps over the lazy dog while seven bright stars shine",
    "one two three four five six seven eight nine ten eleven twelve",
    "Cities: Paris, London, Rome, Berlin. Names: Mary, John.",
]


@dataclass
class Checkpoint:
    """A saved checkpoint directory and the in-memory transformers model it was saved from."""

    path: Path
    model: nn.Module


def randomise(model: nn.Module, seed: int, qk_scale: float = 3.0) -> None:
    """Redraw every parameter: gains in [0.5, 1.5], biases N(0, 0.2), matrices N(0, 1/fan_in), with query
    and key projections (GPT-2: the fused query/key/value one) qk_scale times larger so each query attends
    sharply to a few keys."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1 and ("ln" in name or "norm" in name) and name.endswith("weight"):
                param.copy_(0.5 + torch.rand(param.shape, generator=gen))
            elif param.ndim == 1:
                param.copy_(0.2 * torch.randn(param.shape, generator=gen))
            elif "wte" in name or "wpe" in name or "embed_tokens" in name:
                param.copy_(torch.randn(param.shape, generator=gen))
            else:
                # GPT-2's Conv1D stores (in, out), nn.Linear (out, in): unit-scale outputs either way
                fan_in = param.shape[0] if "c_" in name else param.shape[1]
                scale = qk_scale if any(k in name for k in ("c_attn", "q_proj", "k_proj")) else 1.0
                param.copy_(torch.randn(param.shape, generator=gen) * scale / fan_in**0.5)


def gpt2_checkpoint(path: Path, seed: int = 1) -> Checkpoint:
    """GPT-2 family: 2 layers, d_model 32, 4 heads, GPT-2's real vocabulary (the family's tokenizer is fixed)."""
    import transformers

    cfg = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, n_positions=64, vocab_size=50257, tie_word_embeddings=False
    )
    model = transformers.GPT2LMHeadModel(cfg).eval()
    randomise(model, seed)
    model.save_pretrained(path)
    return Checkpoint(path, model)


def llama_checkpoint(path: Path, seed: int = 2) -> Checkpoint:
    """Llama family with grouped-query attention (4 query heads over 2 key/value heads), rope theta 500
    (far from the 10000 fallback), an untied head and a small byte-level BPE tokenizer of its own."""
    import transformers

    tokenizer = _train_tokenizer()
    cfg = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=tokenizer.get_vocab_size(),
        max_position_embeddings=128,
        rope_theta=500.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    randomise(model, seed)
    model.save_pretrained(path)
    tokenizer.save(str(path / "tokenizer.json"))
    return Checkpoint(path, model)


def gemma2_checkpoint(path: Path, seed: int = 3) -> Checkpoint:
    """Gemma 2 family on the Llama test tokenizer: norms after attention and after the MLP (every gain
    random, stored as w and applied as 1 + w), attention and MLP biases, grouped-query attention, a
    sliding window of 8 on the first layer, attention logits capped at 20 (about 3/4 of them past half the
    cap, where tanh bends them, and attention still far from uniform) and final logits at 15 (the test
    pairs' slopes 1 - (logit/cap)^2 range from 0.05 to 1), queries scaled by 24^-1/2."""
    import transformers

    tokenizer = _train_tokenizer()
    cfg = transformers.Gemma2Config(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=tokenizer.get_vocab_size(),
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        attention_bias=True,
        query_pre_attn_scalar=24,
        attn_logit_softcapping=20.0,
        final_logit_softcapping=15.0,
        sliding_window=8,
        tie_word_embeddings=True,
    )
    model = transformers.Gemma2ForCausalLM(cfg).eval()
    randomise(model, seed)
    model.save_pretrained(path)
    tokenizer.save(str(path / "tokenizer.json"))
    return Checkpoint(path, model)


def olmo2_checkpoint(path: Path, seed: int = 4) -> Checkpoint:
    """OLMo 2 family on the Llama test tokenizer: no norms before the blocks, norms after attention and
    after the MLP, queries and keys RMS-normed over all heads together (their gains tripled: the norm
    leaves the gains alone to make attention peaked), attention biases, grouped-query attention."""
    import transformers

    tokenizer = _train_tokenizer()
    cfg = transformers.Olmo2Config(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=tokenizer.get_vocab_size(),
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        attention_bias=True,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=0,
    )
    model = transformers.Olmo2ForCausalLM(cfg).eval()
    randomise(model, seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                param.mul_(3.0)
    model.save_pretrained(path)
    tokenizer.save(str(path / "tokenizer.json"))
    return Checkpoint(path, model)


def _train_tokenizer():  # noqa: ANN202
    """A byte-level BPE trained on a few sentences (deterministic), with the target words as tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_CORPUS * 20, trainer)
    for word in LLAMA_TARGETS:
        assert len(tok.encode(word, add_special_tokens=False).ids) == 1, word
    return tok
