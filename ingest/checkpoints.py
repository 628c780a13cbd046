"""Loading checkpoints into the standard layout: Hugging Face directories, the HF cache, GGUF, built-ins.

Each family's converter is the one place that knows its checkpoint's tensor names; after it, a model
is a ModelConfig plus standard-layout tensors, whatever it was loaded from.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tiktoken
import torch

from ingest import DEFAULT_MODEL
from ingest.errors import ModelNotFound
from ingest.model import HookedTransformer, ModelConfig, check_weights

Weights = dict[tuple[str, int | None], torch.Tensor]
BUILTIN_NAMES = (DEFAULT_MODEL, "gpt2-tiny")


@dataclass
class LoadedModel:
    name: str
    model: HookedTransformer
    tokenizer: tiktoken.Encoding
    checkpoint_hash: str


def weights_hash(weights: Weights) -> str:
    """A content hash of the weights, so one name can never silently stand for two checkpoints."""
    digest = hashlib.blake2b(digest_size=16)
    for (name, layer), tensor in sorted(
        weights.items(), key=lambda kv: (kv[0][0], kv[0][1] if kv[0][1] is not None else -1)
    ):
        digest.update(f"{name}:{layer}".encode())
        digest.update(tensor.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def _zeros(*shape: int) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.float32)


def gpt2_config(hf: dict) -> ModelConfig:
    d_model, n_heads = hf["n_embd"], hf["n_head"]
    return ModelConfig(
        family="gpt2",
        n_layers=hf["n_layer"],
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=n_heads,
        d_head=d_model // n_heads,
        d_mlp=hf.get("n_inner") or 4 * d_model,
        vocab_size=hf["vocab_size"],
        n_ctx=hf["n_positions"],
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
    )


def gpt2_weights(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> Weights:
    """GPT-2's Conv1D tensors are stored (in, out), so columns split into heads directly."""
    sd = {k.removeprefix("transformer."): v.to(torch.float32) for k, v in sd.items()}
    d, h, dh = cfg.d_model, cfg.n_heads, cfg.d_head

    def per_head(mat: torch.Tensor) -> torch.Tensor:  # (d, h*dh) -> (h, d, dh)
        return mat.reshape(d, h, dh).permute(1, 0, 2).contiguous()

    w: Weights = {
        ("embedding", None): sd["wte.weight"],
        ("position_embedding", None): sd["wpe.weight"],
        ("unembedding", None): sd.get("lm_head.weight", sd["wte.weight"]).T.contiguous(),
        ("layer_norm_gain.final", None): sd["ln_f.weight"],
        ("layer_norm_bias.final", None): sd["ln_f.bias"],
    }
    for i in range(cfg.n_layers):
        p = f"h.{i}."
        qkv_w, qkv_b = sd[p + "attn.c_attn.weight"], sd[p + "attn.c_attn.bias"]
        w.update(
            {
                ("layer_norm_gain.pre_attn", i): sd[p + "ln_1.weight"],
                ("layer_norm_bias.pre_attn", i): sd[p + "ln_1.bias"],
                ("attn.to_query", i): per_head(qkv_w[:, :d]),
                ("attn.to_key", i): per_head(qkv_w[:, d : 2 * d]),
                ("attn.to_value", i): per_head(qkv_w[:, 2 * d :]),
                ("attn.query_bias", i): qkv_b[:d].reshape(h, dh),
                ("attn.key_bias", i): qkv_b[d : 2 * d].reshape(h, dh),
                ("attn.value_bias", i): qkv_b[2 * d :].reshape(h, dh),
                ("attn.to_residual", i): sd[p + "attn.c_proj.weight"].reshape(h, dh, d),
                ("attn.residual_bias", i): sd[p + "attn.c_proj.bias"],
                ("layer_norm_gain.pre_mlp", i): sd[p + "ln_2.weight"],
                ("layer_norm_bias.pre_mlp", i): sd[p + "ln_2.bias"],
                ("mlp.to_hidden", i): sd[p + "mlp.c_fc.weight"],
                ("mlp.hidden_bias", i): sd[p + "mlp.c_fc.bias"],
                ("mlp.to_residual", i): sd[p + "mlp.c_proj.weight"],
                ("mlp.residual_bias", i): sd[p + "mlp.c_proj.bias"],
            }
        )
    return w


def llama_config(hf: dict) -> ModelConfig:
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    return ModelConfig(
        family="llama",
        n_layers=hf["num_hidden_layers"],
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        d_head=hf.get("head_dim") or d_model // n_heads,
        d_mlp=hf["intermediate_size"],
        vocab_size=hf["vocab_size"],
        n_ctx=hf["max_position_embeddings"],
        norm_eps=hf.get("rms_norm_eps", 1e-5),
        rope_theta=float(hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0)),
    )


def llama_weights(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> Weights:
    """Llama's nn.Linear tensors are stored (out, in); the family has no biases, stored here as zeros."""
    sd = {k.removeprefix("model."): v.to(torch.float32) for k, v in sd.items()}
    d, h, hkv, dh = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head

    def per_head(mat: torch.Tensor, heads: int) -> torch.Tensor:  # (heads*dh, d) -> (heads, d, dh)
        return mat.reshape(heads, dh, d).transpose(1, 2).contiguous()

    embed = sd["embed_tokens.weight"]
    w: Weights = {
        ("embedding", None): embed,
        ("unembedding", None): sd.get("lm_head.weight", embed).T.contiguous(),
        ("layer_norm_gain.final", None): sd["norm.weight"],
        ("layer_norm_bias.final", None): _zeros(d),
    }
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        w.update(
            {
                ("layer_norm_gain.pre_attn", i): sd[p + "input_layernorm.weight"],
                ("layer_norm_bias.pre_attn", i): _zeros(d),
                ("attn.to_query", i): per_head(sd[p + "self_attn.q_proj.weight"], h),
                ("attn.to_key", i): per_head(sd[p + "self_attn.k_proj.weight"], hkv),
                ("attn.to_value", i): per_head(sd[p + "self_attn.v_proj.weight"], hkv),
                ("attn.query_bias", i): _zeros(h, dh),
                ("attn.key_bias", i): _zeros(hkv, dh),
                ("attn.value_bias", i): _zeros(hkv, dh),
                ("attn.to_residual", i): sd[p + "self_attn.o_proj.weight"].T.reshape(h, dh, d).contiguous(),
                ("attn.residual_bias", i): _zeros(d),
                ("layer_norm_gain.pre_mlp", i): sd[p + "post_attention_layernorm.weight"],
                ("layer_norm_bias.pre_mlp", i): _zeros(d),
                ("mlp.to_gate", i): sd[p + "mlp.gate_proj.weight"].T.contiguous(),
                ("mlp.to_hidden", i): sd[p + "mlp.up_proj.weight"].T.contiguous(),
                ("mlp.hidden_bias", i): _zeros(cfg.d_mlp),
                ("mlp.to_residual", i): sd[p + "mlp.down_proj.weight"].T.contiguous(),
                ("mlp.residual_bias", i): _zeros(d),
            }
        )
    return w


_FAMILIES: dict[str, tuple[Callable[[dict], ModelConfig], Callable[[ModelConfig, dict], Weights]]] = {
    "gpt2": (gpt2_config, gpt2_weights),
    "llama": (llama_config, llama_weights),
}


def build(hf_config: dict, state_dict: dict[str, torch.Tensor]) -> HookedTransformer:
    family = hf_config.get("model_type")
    if family not in _FAMILIES:
        raise ModelNotFound(f"model_type {family!r} is not supported: use a gpt2 or llama checkpoint")
    to_config, to_weights = _FAMILIES[family]
    cfg = to_config(hf_config)
    try:
        weights = to_weights(cfg, state_dict)
    except KeyError as exc:
        raise ModelNotFound(f"checkpoint lacks tensor {exc.args[0]}: is it a complete {family} checkpoint?") from None
    check_weights(cfg, weights)
    return HookedTransformer(cfg, weights)


def read_hf_dir(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    config = json.loads((path / "config.json").read_text())
    if (path / "model.safetensors").exists():
        from safetensors.torch import load_file

        return config, load_file(str(path / "model.safetensors"))
    if (path / "pytorch_model.bin").exists():
        return config, torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise ModelNotFound(f"{path} has config.json but neither model.safetensors nor pytorch_model.bin")


def hf_cache_dir(repo_id: str) -> Path | None:
    """The snapshot of `repo_id` in the local Hugging Face cache, downloading only when the hub is allowed."""
    from huggingface_hub import snapshot_download

    patterns = ["config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            return None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception:
        return None


def tokenizer_for(family: str, path: Path | None) -> tiktoken.Encoding:
    from ingest.tokenizers import gpt2_tokenizer, load_tokenizer_json

    if family == "gpt2":
        return gpt2_tokenizer()
    if path is not None and (path / "tokenizer.json").exists():
        try:
            return load_tokenizer_json(path / "tokenizer.json")
        except ValueError as exc:
            raise ModelNotFound(f"cannot use {path / 'tokenizer.json'}: {exc}") from None
    raise ModelNotFound(
        f"no tokenizer for this {family} checkpoint{f' at {path}' if path else ''}: add its tokenizer.json "
        "(byte-level BPE) to the directory, or load the model from a .gguf file, which carries its tokenizer"
    )


@functools.lru_cache(maxsize=2)
def load_model(name: str = DEFAULT_MODEL) -> LoadedModel:
    """Resolve a built-in name, a directory, a .gguf file or a Hugging Face id in the local cache.

    Cached: loading SmolLM2 dequantises 135 M weights and hashes them, and a process (a test session,
    a notebook) often ingests with the same model more than once.
    """
    from ingest import gguf, tokenizers
    from ingest.tiny import tiny_gpt2

    if name == "gpt2-tiny":
        model = tiny_gpt2()
        return LoadedModel(name, model, tokenizers.gpt2_tokenizer(), weights_hash(model.weights))
    path = gguf.smollm2_gguf_path() if name in ("smollm2", "smollm2-135m") else Path(name).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        hf_config, sd = gguf.load_gguf(path)
        model = build(hf_config, sd)
        return LoadedModel(name, model, gguf.load_gguf_tokenizer(path), weights_hash(model.weights))
    if not path.is_dir():
        cached = None if os.sep in name or name.startswith(".") else hf_cache_dir(name)
        if cached is None:
            raise ModelNotFound(
                f"unknown model {name!r}: pass a Hugging Face checkpoint directory, a .gguf file, one of "
                f"{', '.join(BUILTIN_NAMES)}, or the id of a model in your local Hugging Face cache"
            )
        path = cached
    if not (path / "config.json").exists():
        raise ModelNotFound(f"{path} is not a Hugging Face checkpoint directory (no config.json)")
    hf_config, sd = read_hf_dir(path)
    model = build(hf_config, sd)
    return LoadedModel(name, model, tokenizer_for(model.config.family, path), weights_hash(model.weights))
