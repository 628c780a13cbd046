"""The README keeps up with the CLI and the repository: every command is documented there and answers
--help, the docs it cites exist, and its walkthrough runs and answers as it says."""

from __future__ import annotations

import csv
import io
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from queries import Warehouse

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_is_in_the_readme_and_has_help(command: str) -> None:
    assert f"actwh {command}" in README, f"the README does not mention `actwh {command}`"
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output, result.output


ROOT = Path(__file__).resolve().parent.parent
WALKTHROUGH = "## From a question to an answer"


def _walkthrough_commands() -> list[list[str]]:
    """The `actwh ...` commands of the README's walkthrough, in order, as argument lists (a command's
    quoted SQL may continue on the next lines)."""
    section = README.split(WALKTHROUGH, 1)[1].split("\n## ", 1)[0]
    commands: list[list[str]] = []
    pending = ""
    for line in section.splitlines():
        code = line.strip()
        if not pending and not (line.startswith("    ") and code.startswith("actwh ")):
            continue
        pending = f"{pending}\n{code}" if pending else code
        try:
            words = shlex.split(pending, comments=True)
        except ValueError:  # a quotation still open: the command goes on
            continue
        commands.append(words[1:])
        pending = ""
    return commands


def test_the_docs_the_readme_cites_exist_and_the_catalogue_names_every_view() -> None:
    for cited in set(re.findall(r"docs/[A-Za-z_]+\.md", README)):
        assert (ROOT / cited).is_file(), f"the README cites {cited}, which is not in the repository"
    catalogue = (ROOT / "docs" / "DERIVED_SCALARS.md").read_text()
    views = [p.stem for p in (ROOT / "queries" / "derived").glob("*.sql") if not p.stem.startswith("online_")]
    assert views and not [v for v in views if f"`{v}`" not in catalogue]


def test_the_walkthrough_runs_and_its_answers_agree(tmp_path: Path) -> None:
    """Every command of the README's walkthrough, on the tiny model: the neurons it finds are the top
    direct effects the activations and weights give, and the examples it lists are that neuron's largest
    activations across the dataset, as a plain scan of the stored rows finds them."""
    commands = _walkthrough_commands()
    assert [c[0] for c in commands] == ["ingest", "ingest", "sql", "top", "examples", "examples"], commands
    db = str(tmp_path / "paris")
    runner = CliRunner()
    outputs = []
    neuron: list[str] = []
    for args in commands:
        args = [db if a == "paris" else a for a in args]
        if args[0] == "ingest":
            args += ["--model", "gpt2-tiny", "--quiet"]
        if args[0] == "examples":  # the README's neuron is SmolLM2's: ask about the tiny model's top one
            at = args.index("--layer")
            args[at : at + 4] = ["--layer", neuron[0], "--node", neuron[1]]
            args = [str(tmp_path / a) if a.endswith(".png") else a for a in args]
        if args[0] == "sql":
            args[1:1] = ["--format", "csv"]
        result = runner.invoke(main, args)
        assert result.exit_code == 0, (args, result.output)
        outputs.append(result.output)
        if args[0] == "sql":
            rows = list(csv.DictReader(io.StringIO(result.output)))
            assert len(rows) == 5, result.output
            neuron = [rows[0]["layer"], rows[0]["node_index"]]

    wh = Warehouse(db)
    assert wh.sql("SELECT text FROM prompts WHERE prompt_id = 0", output="rows") == [("The capital of France is",)]
    n_lines = sum(1 for line in (ROOT / "examples" / "cities.txt").read_text().splitlines() if line.strip())
    assert wh.sql("SELECT count(*) FROM prompts", output="rows") == [(1 + n_lines,)]
    # the answer's first row is the prompt's top MLP direct effect (the view's values are checked against an
    # oracle in tests/test_views.py; here, that the walkthrough's query picks the top of them)
    top = wh.sql(
        "SELECT layer, node_index FROM scalars WHERE dst = 'mlp_write_to_final_residual_grad' AND prompt_id = 0 "
        "ORDER BY value DESC LIMIT 1",
        output="rows",
    )
    assert [str(v) for v in top[0]] == neuron
    # the examples: the neuron's 5 largest activations over every prompt (first tokens included here)
    want = wh.sql(
        "SELECT value FROM activations WHERE dst = 'mlp_post_act' AND pass_type = 'forward' AND layer = ? "
        "AND node_index = ? ORDER BY value DESC LIMIT 5",
        [int(neuron[0]), int(neuron[1])],
        output="rows",
    )
    listed = wh.examples("mlp_post_act", int(neuron[0]), int(neuron[1]), k=5, skip_first=0).to_pylist()
    assert [r["value"] for r in listed] == pytest.approx([v for (v,) in want], rel=1e-6)
    pictures = list(tmp_path.glob("*.png"))
    assert len(pictures) == 1 and pictures[0].read_bytes()[:4] == b"\x89PNG"
