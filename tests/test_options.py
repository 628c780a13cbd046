"""Every option is reached by a test: each command's options are given in some test of that command, the
ingest command builds exactly the settings its options say, and each of those settings is varied by a
test (tests/test_prompt_keys.py varies the ones a prompt's key holds)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cli import main
from ingest import worker
from ingest.worker import IngestOptions

TESTS = Path(__file__).resolve().parent
THIS = Path(__file__).name


def _commands(group: click.Group = main, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _commands(command, (*path, name))
        else:
            found.append(((*path, name), command))
    return found


def _test_texts(*, leave_out: str | None = None) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(TESTS.glob("test_*.py")) if p.name != leave_out}


def test_every_option_of_every_command_is_given_in_a_test_of_that_command() -> None:
    """Static: each spelling of each option appears quoted in a test file that also names the command
    quoted, so an option no test gives (whose handling nothing checks) fails here by name."""
    texts = _test_texts()
    missing = []
    for path, command in _commands():
        named = [t for t in texts.values() if re.search(rf"[\"']{re.escape(path[-1])}[\"']", t)]
        for option in command.params:
            if not isinstance(option, click.Option):
                continue
            for spelling in [*option.opts, *option.secondary_opts]:
                if not any(re.search(rf"[\"']{re.escape(spelling)}[\"' ]", t) for t in named):
                    missing.append(f"{' '.join(path)} {spelling}")
    assert not missing, f"options no test of their command gives: {', '.join(missing)}"


# Every ingest option at a value other than its default, and the settings the command must build from them.
EVERY_INGEST_OPTION = [
    *("--model", "gpt2-tiny", "--prompt", "a cat", "--target", " Paris", "--distractor", " London"),
    *("--objective-node", "mlp_post_act:1:3@-2"),
    *("--locations", "mlp.post_act:forward,attn.v", "--layers", "1", "--layers", "0", "--no-backward"),
    *("--device", "cpu", "--batch-size", "3", "--force", "--wait", "--truncate", "--precision", "bfloat16"),
    *("--unembedding", "all", "--no-prepend-bos", "--special-tokens-as-text", "--max-memory", "2gb"),
    *("--input-weights", "all"),
    *("--store", "summaries,facts", "--facts-every", "4", "--no-sae-error", "--writer-threads", "3", "--quiet"),
    *("--log-file", "progress.log"),
    *("--sae", "first", "--sae", "second@blocks.0.hook_resid_pre"),
]
BUILT = IngestOptions(
    model="gpt2-tiny",
    locations=["mlp.post_act:forward", "attn.v"],
    layers=[1, 0],
    backward=False,
    device="cpu",
    batch_size=3,
    force=True,
    wait=True,
    truncate=True,
    progress=False,
    target=" Paris",
    distractor=" London",
    objective_node="mlp_post_act:1:3@-2",
    precision="bfloat16",
    max_memory=2 * 2**30,
    unembedding="all",
    input_weights="all",
    prepend_bos=False,
    special_tokens_as_text=True,
    store=("summaries", "facts"),
    facts_every=4,
    saes=["first", "second@blocks.0.hook_resid_pre"],
    sae_error=False,
    writer_threads=3,
    log_file=Path("progress.log"),
)


class _Built(Exception):
    """Raised by the stand-in ingest with the settings the command built."""


def test_the_ingest_command_builds_the_settings_its_options_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def built(db_path: object, prompts: object, options: IngestOptions, on_skip: object = None) -> None:
        raise _Built(options)

    monkeypatch.setattr(worker, "ingest", built)
    for extra, want in (([], BUILT), (["--prepend-bos"], dataclasses.replace(BUILT, prepend_bos=True))):
        result = CliRunner().invoke(main, ["ingest", "--db", str(tmp_path / "w"), *EVERY_INGEST_OPTION, *extra])
        assert isinstance(result.exception, _Built), result.output
        assert result.exception.args[0] == want
    assert {f.name for f in dataclasses.fields(IngestOptions)} - {"data_path"} == {
        f.name for f in dataclasses.fields(IngestOptions) if getattr(BUILT, f.name) != getattr(IngestOptions(), f.name)
    }, "an ingest setting is left at its default here: give its option a value"


def test_every_ingest_setting_is_varied_by_a_test() -> None:
    """Each IngestOptions field is set in some other test, as a keyword or through its command-line option
    (the test above checks that the option reaches the field)."""
    texts = "\n".join(_test_texts(leave_out=THIS).values())
    spelling = {"backward": "--no-backward", "progress": "--quiet"}
    spelling |= {"sae_error": "--no-sae-error", "saes": "--sae", "prepend_bos": "--prepend-bos"}
    unvaried = [
        f.name
        for f in dataclasses.fields(IngestOptions)
        if f"{f.name}=" not in texts and f'"{spelling.get(f.name, "--" + f.name.replace("_", "-"))}"' not in texts
    ]
    assert not unvaried, f"ingest settings no test varies: {unvaried}"
