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
import re
from dataclasses import dataclass
from pathlib import Path

import tiktoken
import torch

from ingest import DEFAULT_MODEL
from ingest.errors import ModelNotFound
from ingest.model import HookedTransformer
from ingest.tokenizers import TokenizerSettings

Weights = dict[tuple[str, int | None], torch.Tensor]
BUILTIN_NAMES = (DEFAULT_MODEL, "gpt2-tiny")


@dataclass
class LoadedModel:
    """A hooked model with its tokenizer and the tokenizer's own BOS settings."""

    name: str
    model: HookedTransformer
    tokenizer: tiktoken.Encoding
    checkpoint_hash: str
    special: TokenizerSettings = TokenizerSettings()


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


WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def read_hf_dir(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json, state dict) of a Hugging Face checkpoint directory: one weights file or shards listed
    in an index (model.safetensors.index.json, pytorch_model.bin.index.json), safetensors preferred.
    Tensors keep their stored dtype; the families read them as float32."""
    config = json.loads((path / "config.json").read_text())
    present = [name for name in WEIGHT_FILES if (path / name).exists()]
    if not present:
        raise ModelNotFound(f"{path} has config.json but no weights: expected one of {', '.join(WEIGHT_FILES)}")
    chosen = path / present[0]
    if not chosen.name.endswith(".index.json"):
        return config, _read_weights_file(chosen)
    weight_map = json.loads(chosen.read_text()).get("weight_map") or {}
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        if not (path / shard).is_file():
            raise ModelNotFound(f"{path} is sharded but shard {shard} (listed in {chosen.name}) is missing")
        state.update(_read_weights_file(path / shard))
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise ModelNotFound(f"{chosen.name} lists {missing[0]} but no shard holds it: is the checkpoint complete?")
    return config, state


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hf_cache_dir(repo_id: str) -> Path | None:
    """The snapshot of `repo_id` ('org/name' or 'name') in the local Hugging Face cache ($HF_HUB_CACHE or
    $HF_HOME/hub), downloading it only when the hub is allowed (HF_HUB_OFFLINE unset) and reachable."""
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(repo_id, local_files_only=True))
        if (snapshot / "config.json").exists():
            return snapshot
    except Exception:  # noqa: BLE001 - any failure here means "not in the cache"
        pass
    if _hub_offline():
        return None
    patterns = ["*.json", "*.safetensors"]
    try:
        snapshot = Path(snapshot_download(repo_id, allow_patterns=patterns))
        if not any(snapshot.glob("*.safetensors")):  # an older checkpoint with only pickled weights
            snapshot = Path(snapshot_download(repo_id, allow_patterns=[*patterns, "pytorch_model*.bin"]))
        return snapshot
    except Exception:  # noqa: BLE001 - offline, unknown id or no access: reported as not found
        return None


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


@functools.lru_cache(maxsize=2)
def load_model(name: str = DEFAULT_MODEL) -> LoadedModel:
    """Resolve a built-in name, a directory, a .gguf file or a Hugging Face id ('org/name') in the local cache.

    Cached: loading SmolLM2 dequantises 135 M weights and hashes them, and a process (a test session,
    a notebook) often ingests with the same model more than once.
    """
    from ingest import gguf, tokenizers
    from ingest.tiny import tiny_gpt2

    if name == "gpt2-tiny":
        model = tiny_gpt2()
        encoding, special = tokenizers.gpt2_tokenizer(), tokenizers.GPT2_SETTINGS
        return LoadedModel(name, model, encoding, weights_hash(model.weights), special)
    path = gguf.smollm2_gguf_path() if name in ("smollm2", "smollm2-135m") else Path(name).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        reader = gguf.GGUFReader(str(path))
        hf_config, sd = gguf.load_gguf(reader)
        model = build(hf_config, sd)
        encoding, special = gguf.load_gguf_tokenizer(reader), gguf.load_gguf_tokenizer_settings(reader)
        return _checked(LoadedModel(name, model, encoding, weights_hash(model.weights), special))
    if not path.exists():
        cached = hf_cache_dir(name) if _REPO_ID.match(name) else None
        if cached is None:
            raise ModelNotFound(
                f"unknown model {name!r}: not a checkpoint directory, a .gguf file, one of "
                f"{', '.join(BUILTIN_NAMES)}, nor a model in the local Hugging Face cache"
                + ("" if _hub_offline() else " (and the hub could not provide it)")
            )
        path = cached
    if not (path / "config.json").exists():
        raise ModelNotFound(f"{path} is not a Hugging Face checkpoint directory (no config.json)")
    hf_config, sd = read_hf_dir(path)
    model = build(hf_config, sd)
    encoding, special = tokenizers.tokenizer_for_dir(path, model.config.family, model.config.vocab_size)
    return _checked(LoadedModel(name, model, encoding, weights_hash(model.weights), special))


def _checked(loaded: LoadedModel) -> LoadedModel:
    """A tokenizer whose ids run past the embedding would index out of range mid-ingest: refuse it here."""
    vocab = loaded.model.config.vocab_size
    if loaded.tokenizer.n_vocab > vocab:
        raise ModelNotFound(
            f"the tokenizer has {loaded.tokenizer.n_vocab} tokens but the model's vocabulary only {vocab}: "
            "is the tokenizer this checkpoint's?"
        )
    return loaded
