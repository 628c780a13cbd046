"""The README's section for TransformerLens users keeps up with the code: its table of hook names is the
one warehouse/hook_names.py generates, and its five lines run on a default-capture warehouse."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.prompts import PromptInput
from ingest.worker import IngestOptions, ingest
from queries.api import Warehouse
from warehouse.hook_names import readme_table

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
SECTION = README.split("## For TransformerLens users", 1)[-1].split("\n## ", 1)[0]


def test_the_hook_table_is_the_generated_one() -> None:
    assert readme_table() in SECTION, "README's hook table differs from warehouse.hook_names.readme_table()"


def test_the_five_lines_run_on_a_default_capture(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "w"
    report = ingest(path, [PromptInput("The capital of France is", " Paris", " London")], IngestOptions(
        model="gpt2-tiny", progress=False))  # fmt: skip
    assert report.stored == 1
    code = SECTION.split("```python\n", 1)[1].split("```", 1)[0]
    assert len([line for line in code.splitlines() if line.strip()]) == 5
    scope: dict[str, object] = {}
    exec(code.replace('Warehouse("w")', f"Warehouse({str(path)!r})"), scope)  # noqa: S102 - the README's own lines
    cache, resid, labels = scope["cache"], scope["resid"], scope["labels"]
    attrs = cache.logit_attrs(resid, cache.target_ids[0], cache.distractor_ids[0], pos_slice=-1)
    assert labels[-1] == "final_post" and attrs.shape == (len(labels), 1)
    cache.close()
    # the last entry is the final residual: its attribution is the stored logit difference less what the
    # final norm's bias adds to it (TransformerLens folds that bias into the unembedding's)
    (objective, bias_term), *_ = Warehouse(path).sql(
        "SELECT p.objective, sum(b.value * (t.value - d.value)) FROM prompts p"
        " JOIN weights b ON b.location = 'layer_norm_bias.final'"
        " JOIN weights t ON t.location = 'unembedding' AND t.col_index = p.target_id AND t.row_index = b.row_index"
        " JOIN weights d ON d.location = 'unembedding' AND d.col_index = p.distractor_id AND d.row_index = b.row_index"
        " GROUP BY p.objective",
        output="rows",
    )
    expected = torch.tensor(objective - bias_term)
    assert torch.isclose(attrs[-1, 0], expected, atol=1e-4 * max(1.0, abs(objective))), (attrs[-1, 0], expected)
