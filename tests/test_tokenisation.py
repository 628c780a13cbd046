"""Special tokens in prompt text, and the BOS: what the ingest stores as a prompt's ids."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from ingest.tokenizers import gpt2_tokenizer, tokenizer_settings
from tests import random_models
from tests.test_bad_input import assert_one_line_error, ingest
from warehouse import db as warehouse_db

ENDOFTEXT = 50256
TEXT = "The capital of France is"


def _token_ids(db: Path) -> list[list[int]]:
    con = warehouse_db.connect(db, read_only=True)
    try:
        rows = con.sql(
            "SELECT list(token_id ORDER BY token) FROM tokens GROUP BY prompt_id ORDER BY prompt_id"
        ).fetchall()
    finally:
        con.close()
    return [r[0] for r in rows]


def _tiny(db: Path, *args: str) -> None:
    result = ingest(db, "--model", "gpt2-tiny", "--no-backward", *args)
    assert result.returncode == 0, result.stderr


def test_special_token_text_is_the_special_token(tmp_path: Path) -> None:
    plain = gpt2_tokenizer().encode_ordinary(TEXT)
    _tiny(tmp_path / "a.duckdb", "--prompt", "<|endoftext|>" + TEXT)
    assert _token_ids(tmp_path / "a.duckdb") == [[ENDOFTEXT, *plain]]
    _tiny(tmp_path / "b.duckdb", "--prompt", "<|endoftext|>" + TEXT, "--special-tokens-as-text")
    spelled = _token_ids(tmp_path / "b.duckdb")[0]
    assert ENDOFTEXT not in spelled and spelled[-len(plain) :] == plain and len(spelled) > len(plain) + 1


def test_bos_is_prepended_on_request_never_to_the_target(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    plain = gpt2_tokenizer().encode_ordinary(TEXT)
    _tiny(db, "--prompt", TEXT)  # GPT-2's default: no BOS
    _tiny(db, "--prompt", TEXT, "--prepend-bos", "--target", " Paris")
    assert _token_ids(db) == [plain, [ENDOFTEXT, *plain]]  # the same text with a BOS is another prompt
    con = warehouse_db.connect(db, read_only=True)
    try:
        (target_id,) = con.execute("SELECT target_id FROM prompts WHERE target IS NOT NULL").fetchone()
    finally:
        con.close()
    assert target_id == gpt2_tokenizer().encode_ordinary(" Paris")[0]


@pytest.mark.parametrize(
    ("add_bos_token", "template", "expected"), [(True, False, True), (None, True, True), (False, True, False)]
)
def test_tokenizer_config_decides_the_bos_default(
    tmp_path: Path, add_bos_token: bool | None, template: bool, expected: bool
) -> None:
    from ingest.tokenizers import load_tokenizer_json

    random_models.byte_level_tokenizer(tmp_path, add_bos_token, template)
    settings = tokenizer_settings(tmp_path, load_tokenizer_json(tmp_path / "tokenizer.json"))
    assert (settings.bos_id, settings.eos_id, settings.add_bos) == (0, 1, expected)


def test_a_checkpoint_directory_prepends_its_bos_by_default(tmp_path: Path) -> None:
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=random_models.VOCAB,
        max_position_embeddings=64,
    )
    ckpt = random_models.save(random_models.build(config), tmp_path / "ckpt")
    random_models.byte_level_tokenizer(ckpt, True, False)
    db = tmp_path / "w.duckdb"
    for extra in ([], ["--no-prepend-bos"]):
        result = ingest(db, "--model", str(ckpt), "--no-backward", "--prompt", TEXT, *extra)
        assert result.returncode == 0, result.stderr
    with_bos, without = _token_ids(db)
    assert with_bos == [0, *without] and 0 not in without


def test_prepend_bos_without_a_bos_token_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ingest import tokenizers

    monkeypatch.setattr(tokenizers, "GPT2_SETTINGS", tokenizers.TokenizerSettings())
    from ingest import checkpoints

    checkpoints.load_model.cache_clear()
    try:
        result = ingest(tmp_path / "w.duckdb", "--model", "gpt2-tiny", "--prompt", TEXT, "--prepend-bos")
        assert_one_line_error(result, "--prepend-bos", "no BOS token")
    finally:
        checkpoints.load_model.cache_clear()


def test_info_shows_the_tokenisation_of_each_run(tmp_path: Path) -> None:
    db = tmp_path / "w"
    _tiny(db, "--prompt", TEXT)
    _tiny(db, "--prompt", TEXT, "--prepend-bos", "--special-tokens-as-text")
    result = CliRunner().invoke(main, ["info", "--db", str(db)])
    assert result.exit_code == 0, result.output
    runs = result.output.split("== runs")[1].split("==")[0]
    header, _, first, second = runs.strip().splitlines()[:4]
    assert "prepend_bos" in header and "special_tokens" in header
    assert "False" in first and "special" in first and "True" in second and "text" in second
