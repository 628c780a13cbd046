"""A prompt's key holds every setting that changes what is stored for it: the same prompt under another
capture, layers, gradients or not, truncation, BOS or special-token reading is another prompt and is
stored again (a prompt stored without gradients, asked for with them, gets them); the same settings store
it once; --force stores it again."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from click.testing import CliRunner

from cli import main
from ingest.prompts import PromptInput
from ingest.worker import IngestOptions, ingest
from queries.api import Warehouse
from warehouse import db


def _stored(path: Path, sql: str) -> list[tuple]:
    with db.connect(path, read_only=True) as con:
        return con.execute(sql).fetchall()


def test_every_setting_in_the_prompt_key_stores_the_prompt_again(tmp_path: Path) -> None:
    """The same prompt under each setting the key holds (capture, layers, gradients, truncation, BOS,
    special tokens) is stored again; the same settings twice store it once; --force stores it again."""
    path = tmp_path / "w"
    prompt = [PromptInput("The cat sat on the mat")]
    base = IngestOptions(model="gpt2-tiny", progress=False, store=("facts",), locations=["mlp.post_act"])
    first = ingest(path, prompt, dataclasses.replace(base, backward=False))
    assert first.stored == 1
    with_gradients = ingest(path, prompt, base)
    assert with_gradients.stored == 1, "a prompt stored without gradients counted as stored for a backward ingest"
    gradients = _stored(
        path,
        "SELECT count(*) FROM facts f JOIN prompts p USING (prompt_id) "
        f"WHERE p.run_id = {with_gradients.run_id} AND f.backward IS NOT NULL",
    )
    assert gradients[0][0] > 0, "no gradients stored"
    assert ingest(path, prompt, base).stored == 0
    for change in (
        {"locations": ["mlp.post_act:forward"]},
        {"layers": [1]},
        {"truncate": True},
        {"prepend_bos": True},
        {"special_tokens_as_text": True},
    ):
        report = ingest(path, prompt, dataclasses.replace(base, **change))
        assert (report.stored, report.already_stored) == (1, 0), f"{change}: not another prompt"
    assert ingest(path, prompt, dataclasses.replace(base, force=True)).stored == 1
    assert _stored(path, "SELECT count(*), count(DISTINCT prompt_key) FROM prompts") == [(8, 7)]
    # files --table lists the data files of the table asked for (weights), not the default's (facts)
    listed = CliRunner().invoke(main, ["files", "--db", str(path), "--table", "weights"])
    assert listed.exit_code == 0, listed.output
    assert listed.output.split() == Warehouse(path).parquet_files("weights") != Warehouse(path).parquet_files("facts")
