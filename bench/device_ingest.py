"""Ingest throughput where the model pass runs on a GPU: end to end against the model pass alone.

The model is a Llama with SmolLM2-135M's shapes (30 layers, d_model 576, 9 heads over 3 key/value
heads, d_mlp 1536, vocabulary 49152) and random weights: the SmolLM2 GGUF is not available on the GPU
machine, and the speed depends on shapes only. Prompts of about 20 tokens (5 words of the test
tokenizer), the default capture, both passes. Prints JSON: tokens/s end to end (model load and
registration included), tokens/s of the model pass alone (hooked forward + backward + copies to host
memory, no rows, no writes), their ratio, and the writer's busy share, which says which side sets the pace.

    python -m bench.device_ingest --prompts 512 --batch-size 32 --device cuda
    python -m bench.device_ingest --prompts 4 --batch-size 2 --layers 1 --device cpu   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ingest.capture import CaptureSpec
from ingest.prompts import PromptInput
from ingest.worker import IngestOptions, Prepared, ingest, open_model, run_batch
from tests.random_models import checkpoint_with_tokenizer

SMOLLM2_SHAPES = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-5,
}
WORDS = [
    *("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while"),
    *("seven", "bright", "stars", "shine", "on", "Paris", "London", "Rome"),
]


def prompt_texts(n: int, words: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=words)) for _ in range(n)]


def model_pass_alone(model_dir: Path, texts: list[str], batch_size: int, device: torch.device) -> tuple[float, int]:
    """Seconds and tokens for the hooked passes of `texts`, arrays copied to host memory, nothing stored."""
    loaded = open_model(str(model_dir))
    loaded.model.to(device)
    spec = CaptureSpec()
    items = [
        Prepared(PromptInput(t), loaded.tokenizer.encode_ordinary(t), None, None, str(i)) for i, t in enumerate(texts)
    ]
    run_batch(device, loaded, items[:batch_size], np.arange(batch_size), spec, True).wait()  # warm-up
    start = time.perf_counter()
    for i in range(0, len(items), batch_size):
        part = items[i : i + batch_size]
        run_batch(device, loaded, part, np.arange(len(part)), spec, True).wait()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, sum(len(p.ids) for p in items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--words", type=int, default=5, help="words per prompt (about 4 tokens each)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--layers", type=int, default=30, help="layers of the model (SmolLM2 has 30)")
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = checkpoint_with_tokenizer(
            "LlamaConfig", {**SMOLLM2_SHAPES, "num_hidden_layers": args.layers}, Path(tmp) / "model"
        )
        texts = prompt_texts(args.prompts, args.words)
        alone_s, tokens = model_pass_alone(model_dir, texts, args.batch_size, device)
        options = IngestOptions(model=str(model_dir), device=args.device, batch_size=args.batch_size, progress=False)
        ingest(Path(tmp) / "warm", [PromptInput(t) for t in texts[: args.batch_size]], options)
        report = ingest(Path(tmp) / "w", [PromptInput(t) for t in texts], options)
        size = sum(f.stat().st_size for f in (Path(tmp) / "w" / "data").rglob("*.parquet"))
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "prompts": report.stored,
        "tokens": report.tokens,
        "rows": report.rows,
        "end_to_end_s": round(report.seconds, 2),
        "end_to_end_tokens_per_s": round(report.tokens / report.seconds, 1),
        "model_pass_alone_tokens_per_s": round(tokens / alone_s, 1),
        "end_to_end_over_model_pass": round((report.tokens / report.seconds) / (tokens / alone_s), 3),
        "writer_busy_s": round(report.write_seconds, 2),
        "writer_share": round(report.write_seconds / report.seconds, 3),
        "parquet_bytes": size,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
