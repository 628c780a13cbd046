"""Checkpoint layouts: sharded safetensors and .bin, half-precision weights, the Hugging Face cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from cli import main
from ingest import checkpoints
from ingest.errors import ModelNotFound
from queries import Warehouse
from tests import random_models
from tests.parity import assert_parity

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    hf = random_models.build(transformers.LlamaConfig(**random_models.SMALL_LLAMA))
    return hf, random_models.save(hf, tmp_path_factory.mktemp("single"))


def _ours(path: Path):  # noqa: ANN202
    return checkpoints.build(*checkpoints.read_hf_dir(path))


def test_sharded_safetensors_load_as_the_single_file(llama, tmp_path: Path) -> None:
    hf, single = llama
    hf.save_pretrained(tmp_path, max_shard_size="100KB")
    shards = sorted(p.name for p in tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and (tmp_path / "model.safetensors.index.json").exists()
    a, b = _ours(single), _ours(tmp_path)
    assert checkpoints.weights_hash(a.weights) == checkpoints.weights_hash(b.weights)


def _save_bin_shards(state: dict[str, torch.Tensor], config: dict, path: Path, n: int) -> None:
    """pytorch_model-0000k-of-0000n.bin shards and their index, as older transformers wrote them."""
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    names = sorted(state)
    weight_map = {}
    for k in range(n):
        shard = f"pytorch_model-{k + 1:05d}-of-{n:05d}.bin"
        part = names[k::n]
        torch.save({name: state[name] for name in part}, path / shard)
        weight_map.update(dict.fromkeys(part, shard))
    (path / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_sharded_bin_loads_as_the_single_file(llama, tmp_path: Path) -> None:
    _, single = llama
    config = json.loads((single / "config.json").read_text())
    _save_bin_shards(load_file(str(single / "model.safetensors")), config, tmp_path, 3)
    assert checkpoints.weights_hash(_ours(single).weights) == checkpoints.weights_hash(_ours(tmp_path).weights)


def test_a_missing_shard_is_named(llama, tmp_path: Path) -> None:
    _, single = llama
    config = json.loads((single / "config.json").read_text())
    _save_bin_shards(load_file(str(single / "model.safetensors")), config, tmp_path, 2)
    (tmp_path / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(ModelNotFound, match="sharded but shard pytorch_model-00002-of-00002.bin .* is missing"):
        _ours(tmp_path)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_checkpoints_compute_in_float32(llama, tmp_path: Path, dtype: torch.dtype) -> None:
    """The stored half-precision weights, upcast, against transformers running the same file in float32."""
    hf, _ = llama
    hf.to(dtype).save_pretrained(tmp_path)
    hf.to(torch.float32)
    assert next(iter(load_file(str(tmp_path / "model.safetensors")).values())).dtype == dtype
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    reference.config._attn_implementation = "eager"
    ours = _ours(tmp_path)
    assert all(t.dtype == torch.float32 for t in ours.weights.values())
    assert_parity(reference, ours, random_models.prompts((40, 7)), 7, 11)


def _cache_snapshot(cache: Path, repo_id: str, source: Path) -> Path:
    """The Hugging Face cache layout: models--org--name/{refs/main, snapshots/<commit>/...}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in source.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_org_name_is_found_in_the_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--model org/name` from a private HF cache, offline: a small GPT-2 with GPT-2's vocabulary."""
    import huggingface_hub.constants

    hf = random_models.build(
        transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0)
    )
    snapshot = _cache_snapshot(tmp_path / "hub", "someorg/tiny-gpt2", random_models.save(hf, tmp_path / "src"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert checkpoints.hf_cache_dir("someorg/tiny-gpt2") == snapshot
    db = tmp_path / "w.duckdb"
    args = ["ingest", "--db", str(db), "--model", "someorg/tiny-gpt2", "--prompt", "Hello there", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["ingest", "--db", str(db), "--model", "someorg/absent", "--prompt", "Hi"])
    assert result.exit_code == 2
    assert "unknown model 'someorg/absent'" in result.output and "Hugging Face cache" in result.output


def test_a_missing_gpt2_rank_file_names_the_file_and_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pip alone does not install GPT-2's rank file (it comes from openai-whisper's sdist)."""
    import importlib.metadata

    from ingest import tokenizers

    def not_installed(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(tokenizers.importlib.metadata, "distribution", not_installed)
    checkpoints.load_model.cache_clear()
    try:
        result = CliRunner().invoke(
            main, ["ingest", "--db", str(tmp_path / "w.duckdb"), "--model", "gpt2-tiny", "--prompt", "Hi"]
        )
    finally:
        checkpoints.load_model.cache_clear()
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert "whisper/assets/gpt2.tiktoken" in line and "pip install --no-deps openai-whisper==" in line
    assert "corrupt" not in line


def test_gemma2_ingests_storing_its_post_block_norm_scales_by_default(tmp_path: Path) -> None:
    """The default capture keeps the scales the views divide a post-normed block's writes by, in models
    that have such norms (and only there: GPT-2 and Llama ingests with the default capture elsewhere)."""
    kwargs = {**random_models.SMALL_LLAMA, "head_dim": 16, "tie_word_embeddings": True}
    ckpt = random_models.checkpoint_with_tokenizer("Gemma2Config", kwargs, tmp_path / "ckpt")
    db = tmp_path / "w.duckdb"
    args = ["ingest", "--db", str(db), "--model", str(ckpt), "--prompt", "The capital of France is", "--quiet"]
    result = CliRunner().invoke(main, [*args, "--target", " Paris", "--distractor", " London"])
    assert result.exit_code == 0, result.output
    wh = Warehouse(db)
    with wh.session():
        query = "SELECT locations, n_tokens FROM runs JOIN prompts USING (run_id)"
        ((locations, n_tokens),) = wh.sql(query, output="rows")
        counts = dict(wh.sql("SELECT dst, count(*) FROM activations GROUP BY dst", output="rows"))
        effects = wh.sql("SELECT count(*) FROM mlp_write_to_final_residual_grad", output="rows")[0][0]
    assert {"attn_post_ln.scale:forward", "mlp_post_ln.scale:forward"} <= set(locations)
    assert counts["attn_output_layer_norm_scale"] == counts["mlp_output_layer_norm_scale"] == n_tokens * 2  # 2 layers
    assert effects == 96 * 2  # d_mlp x layers, at the last token
    # stored without them, the prompt has no direct effects rather than ones missing the scale's division
    without = ["--locations", "mlp.post_act:forward,resid.ln_f.scale:forward,resid.post_mlp:forward"]
    result = CliRunner().invoke(main, [*args, "--target", " Rome", *without, "--no-backward"])
    assert result.exit_code == 0, result.output
    with wh.session():
        counts = wh.sql("SELECT prompt_id, count(*) FROM mlp_write_to_final_residual_grad GROUP BY ALL", output="rows")
        stored = wh.sql("SELECT count(DISTINCT prompt_id) FROM activations WHERE dst = 'mlp_post_act'", output="rows")
    assert [n for _, n in counts] == [96 * 2] and stored == [(2,)]


def test_a_location_the_model_does_not_have_is_refused(tmp_path: Path) -> None:
    args = ["ingest", "--db", str(tmp_path / "w.duckdb"), "--model", "gpt2-tiny", "--prompt", "Hi"]
    result = CliRunner().invoke(main, [*args, "--locations", "attn_post_ln.scale"])
    assert result.exit_code == 2
    assert "location attn_post_ln.scale does not exist in this model" in result.output


def test_an_unsupported_config_value_is_one_line_naming_it(llama, tmp_path: Path) -> None:
    _, single = llama
    for file in single.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    config = json.loads((tmp_path / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    (tmp_path / "config.json").write_text(json.dumps(config))
    args = ["ingest", "--db", str(tmp_path / "w.duckdb"), "--model", str(tmp_path), "--prompt", "Hi"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert "llama config field rope_parameters.rope_type = 'dynamic' is not supported" in line
