"""Loading checkpoints into the standard layout: Hugging Face directories, the HF cache, GGUF, built-ins.

Each family's module (ingest/families) is the one place that knows its checkpoint's config fields and
tensor names; after it, a model is a ModelConfig plus standard-layout tensors, whatever it was loaded
from.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import tiktoken
import torch

from ingest import DEFAULT_MODEL
from ingest.errors import ModelNotFound
from ingest.model import HookedTransformer

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


def build(hf_config: dict, state_dict: dict[str, torch.Tensor]) -> HookedTransformer:
    """The hooked model for a Hugging Face config and state dict (see ingest/families)."""
    from ingest import families

    return families.build(hf_config, state_dict)


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
