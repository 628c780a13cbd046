"""Benchmark: bytes per token of a k-sparse SAE's latents (forward and backward) against a dense capture of
the site it reads.

    python -m bench.sae_storage --prompts 32 --tokens 128 --k 32

1. Writes a SAELens topk SAE (random weights, unit decoder rows, d_sae = --expansion x d_model) on the
   residual after --layer of the default model (SmolLM2-135M), to a scratch folder.
2. Ingests the same deterministic prompts twice into one warehouse: once storing the site itself
   (resid.post_mlp at that layer, both passes), once with the SAE spliced in (--no-sae-error).
3. Writes each dst's rows to Parquet with the lake's own settings (zstd, Parquet 2) in the order the
   lake stores them, and reports bytes per token and per stored value.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # `python bench/sae_storage.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from safetensors.torch import save_file

from ingest.checkpoints import load_model
from ingest.prompts import PromptInput
from ingest.worker import IngestOptions, ingest
from warehouse import db, lake

WORDS = (
    "the",
    "of",
    "and",
    "to",
    "in",
    "a",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
)


def prompts(n: int, tokens: int, seed: int = 0) -> list[PromptInput]:
    """n deterministic word salads of about `tokens` tokens (one word is about one token)."""
    rng = random.Random(seed)
    return [PromptInput(" ".join(rng.choice(WORDS) for _ in range(tokens))) for _ in range(n)]


def write_topk_sae(directory: Path, d_model: int, d_sae: int, k: int, hook_name: str) -> Path:
    gen = torch.Generator().manual_seed(0)
    w_dec = torch.randn(d_sae, d_model, generator=gen)
    w_dec /= w_dec.norm(dim=-1, keepdim=True)
    tensors = {
        "W_enc": w_dec.T.contiguous(),
        "b_enc": torch.zeros(d_sae),
        "W_dec": w_dec,
        "b_dec": torch.zeros(d_model),
    }
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, directory / "sae_weights.safetensors")
    cfg = {"architecture": "topk", "d_in": d_model, "d_sae": d_sae, "k": k, "apply_b_dec_to_input": True,
           "normalize_activations": "none", "metadata": {"hook_name": hook_name}}  # fmt: skip
    (directory / "cfg.json").write_text(json.dumps(cfg))
    return directory


def dst_bytes(path: Path, dst: str, scratch: Path) -> tuple[int, int]:
    """(Parquet bytes, rows) of one dst's fact rows written with the lake's settings."""
    out = scratch / f"{dst}.parquet"
    con = db.connect(path, read_only=True)
    try:
        rows = con.execute("SELECT count(*) FROM facts WHERE dst = ?", [dst]).fetchall()[0][0]
        compression, version = lake.LAKE_OPTIONS["parquet_compression"], lake.LAKE_OPTIONS["parquet_version"]
        con.execute(
            f"COPY (SELECT * FROM facts WHERE dst = '{dst}') TO '{out}'"
            f" (FORMAT parquet, COMPRESSION {compression}, PARQUET_VERSION V{version})"
        )
    finally:
        con.close()
    return out.stat().st_size, int(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--expansion", type=int, default=16)
    parser.add_argument("--db", type=Path, help="warehouse to use (kept; a rerun finds the prompts stored)")
    args = parser.parse_args()
    d_model = load_model(args.model).model.config.d_model
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        hook = f"blocks.{args.layer}.hook_resid_post"
        sae = write_topk_sae(
            (args.db.parent if args.db else scratch) / "sae_storage_sae",
            d_model,
            args.expansion * d_model,
            args.k,
            hook,
        )
        path = args.db or scratch / "wh"
        texts = prompts(args.prompts, args.tokens)
        common = {"model": args.model, "progress": False, "layers": [args.layer]}
        ingest(path, texts, IngestOptions(locations=["resid.post_mlp"], **common))
        ingest(
            path,
            texts,
            IngestOptions(locations=["resid.ln_f.scale:forward"], saes=[str(sae)], sae_error=False, **common),
        )
        sizes = {dst: dst_bytes(path, dst, scratch) for dst in ("resid_post_mlp", "online_autoencoder_latent")}
        tokens = sizes["resid_post_mlp"][1] // d_model
        print(f"{args.model}, residual after layer {args.layer} (d_model {d_model}); topk SAE k={args.k}, "
              f"d_sae {args.expansion * d_model}; {args.prompts} prompts, {tokens} tokens; zstd Parquet")  # fmt: skip
        print("| stored | rows per token | bytes per token | bytes per value (2 per row) |")
        print("|---|---|---|---|")
        for label, dst in (
            ("dense site, both passes", "resid_post_mlp"),
            ("SAE latents, both passes", "online_autoencoder_latent"),
        ):
            size, rows = sizes[dst]
            print(f"| {label} | {rows / tokens:.1f} | {size / tokens:.0f} | {size / rows / 2:.2f} |")


if __name__ == "__main__":
    main()
