"""Edges sum over every write into the residual stream: a warehouse whose run left some out (`--layers`, or
`--locations` without the attention values or a norm scale) is refused in one line naming what is missing,
for every edge question, where it answered with the remaining edges and no sign that some were missing."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from warehouse.registry import DEFAULT_CAPTURE, LOCATIONS

FULL = [name for name in DEFAULT_CAPTURE if LOCATIONS[name].only_with != "post_block_norms"]
FULL += ["mlp.pre_act:forward", "attn.v_out:backward"]  # what edges into MLP neurons and value sides read
QUESTIONS = (
    ["--into", "mlp_post_act:1:3"],
    ["--from", "attn_qk_probs:0:1"],
    ["--from", "resid_post_embedding"],
    ["--into", "attn_value:1:0"],
)  # not one edge alone (--from with --with): it reads its two ends only, and answers without the others


@pytest.mark.parametrize(
    ("capture", "message", "named"),
    [
        (
            ["--locations", ",".join(FULL), "--layers", "1"],
            "run 0 stored only layers 1 (ingest without --layers)",
            "layers 1",
        ),
        (
            ["--locations", ",".join(n for n in FULL if n not in ("attn.v", "mlp_ln.scale"))],
            "run 0 did not store attn.v:forward, mlp_ln.scale:forward (ingest with the default --locations",
            "attn.v:forward",
        ),
    ],
    ids=["layers", "locations"],
)
def test_edges_refuse_a_warehouse_that_left_writes_out(
    tmp_path: Path, capture: list[str], message: str, named: str
) -> None:
    """Every question names what is missing (a node kind's own check may name it first: the attention values
    for an attention node); edges into an MLP neuron, which need nothing more, give the whole message."""
    path = str(tmp_path / "w")
    ingest = ["ingest", "--db", path, "--model", "gpt2-tiny", "--prompt", "The capital of France is", "--quiet"]
    stored = CliRunner().invoke(main, [*ingest, "--input-weights", "all", *capture])
    assert stored.exit_code == 0, stored.output
    for question in QUESTIONS:
        result = CliRunner().invoke(main, ["edges", "--db", path, *question, "--prompt-id", "0"])
        assert result.exit_code == 2, (question, result.output)  # a question the data cannot answer
        assert named in result.output and len(result.output.strip().splitlines()) == 1, (question, result.output)
        assert message in result.output or question[1] != "mlp_post_act:1:3", result.output
