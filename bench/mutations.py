"""Mutation check: every known kind of bug, injected into a scratch copy of the tree, must turn a test red.

    python bench/mutations.py                      # every mutation (about 20 minutes on 2 cores)
    python bench/mutations.py view_last_token_of_longest_prompt sigterm_handler_removed
    python bench/mutations.py --list
    python bench/mutations.py --markdown TESTING.md  # also rewrite the table there

A mutation is a few textual edits (file, old snippet, new snippet) plus the tests that should catch it.
For each one the tree (git's tracked files and untracked ones it does not ignore) is copied to a scratch
directory, the edits are applied there, and pytest runs those tests in the copy; its JUnit report says
which tests failed. An old snippet found zero times or more than once is an ERROR, never a kill: code
moved, so retarget the entry. The unmutated copy runs the same tests first and must pass, so a kill is
the mutation's doing. Exit status 0 when every mutation is killed, 1 when one survives or errs, 2 when
the unmutated tree fails its tests.

Add an entry for every bug fixed from now on: the bug as a small edit, and the tests that now catch it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLE_START, TABLE_END = "<!-- mutations:start -->", "<!-- mutations:end -->"

VIEWS = "tests/test_views.py"
PARITY = "tests/test_parity.py"
ROUNDTRIP = "tests/test_roundtrip.py"
RELIABILITY = "tests/test_reliability.py"


@dataclass(frozen=True)
class Edit:
    path: str
    old: str
    new: str


@dataclass(frozen=True)
class Mutation:
    name: str
    bug: str
    edits: tuple[Edit, ...]
    tests: tuple[str, ...]


def replace(path: str, old: str, new: str) -> tuple[Edit, ...]:
    return (Edit(path, old, new),)


def swap(path: str, a: str, b: str) -> tuple[Edit, ...]:
    """Two snippets exchanged (each must occur once): b's text goes where a was, via a placeholder."""
    marker = "\x00swapped\x00"
    return Edit(path, a, marker), Edit(path, b, a), Edit(path, marker, b)


CHECKPOINTS = "ingest/checkpoints.py"
MODEL = "ingest/model.py"
WORKER = "ingest/worker.py"
GPT2_STATE = 'sd = {k.removeprefix("transformer."): v.to(torch.float32) for k, v in sd.items()}'

MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "rope_theta_ignored",
        "the rotary embedding uses theta 10000 whatever the config says",
        replace(CHECKPOINTS, 'rope_theta=float(hf.get("rope_theta", 10000.0)),', "rope_theta=10000.0,"),
        (PARITY, VIEWS),
    ),
    Mutation(
        "gpt2_biases_zeroed",
        "GPT-2's attention and MLP biases read as zeros",
        replace(
            CHECKPOINTS,
            GPT2_STATE,
            'sd = {k.removeprefix("transformer."): v.to(torch.float32)'
            ' * (0 if k.endswith("bias") and "ln_" not in k else 1) for k, v in sd.items()}',
        ),
        (PARITY, VIEWS),
    ),
    Mutation(
        "gpt2_layernorm_gain_one_bias_zero",
        "GPT-2's LayerNorm gains read as 1 and biases as 0",
        replace(
            CHECKPOINTS,
            GPT2_STATE,
            'sd = {k.removeprefix("transformer."): (v.to(torch.float32) if "ln_" not in k else torch.ones_like(v)'
            ' if k.endswith("weight") else torch.zeros_like(v)) for k, v in sd.items()}',
        ),
        (PARITY, VIEWS),
    ),
    Mutation(
        "gpt2_query_key_biases_swapped",
        "GPT-2's query bias read from the key slice and the key bias from the query slice",
        swap(CHECKPOINTS, "qkv_b[:d].reshape(h, dh)", "qkv_b[d : 2 * d].reshape(h, dh)"),
        (PARITY, VIEWS),
    ),
    Mutation(
        "llama_norm_gains_swapped",
        "Llama's input and post-attention norm gains exchanged",
        swap(CHECKPOINTS, 'sd[p + "input_layernorm.weight"]', 'sd[p + "post_attention_layernorm.weight"]'),
        (PARITY, VIEWS),
    ),
    Mutation(
        "llama_final_gain_one",
        "Llama's final norm gain read as 1",
        replace(
            CHECKPOINTS,
            '("layer_norm_gain.final", None): sd["norm.weight"],',
            '("layer_norm_gain.final", None): torch.ones_like(sd["norm.weight"]),',
        ),
        (PARITY, VIEWS),
    ),
    Mutation(
        "gpt2_unembedding_from_embedding",
        "GPT-2's unembedding taken from the embedding even when the head is untied",
        replace(CHECKPOINTS, 'sd.get("lm_head.weight", sd["wte.weight"])', 'sd["wte.weight"]'),
        (PARITY, VIEWS),
    ),
    Mutation(
        "llama_unembedding_from_embedding",
        "Llama's unembedding taken from the embedding even when the head is untied",
        replace(CHECKPOINTS, 'sd.get("lm_head.weight", embed)', "embed"),
        (PARITY, VIEWS),
    ),
    Mutation(
        "layer_not_captured",
        "the recorder keeps nothing of layer 1",
        replace(
            "ingest/capture.py",
            "if self.spec.wants(name, layer, PassType.FORWARD):",
            "if self.spec.wants(name, layer, PassType.FORWARD) and layer != 1:",
        ),
        (PARITY, ROUNDTRIP, VIEWS),
    ),
    Mutation(
        "view_last_token_of_longest_prompt",
        "direct effects take every prompt's last token as max(n_tokens) - 1",
        replace(
            "queries/support/20_pairs.sql",
            "s.token = p.n_tokens - 1",
            "s.token = (SELECT max(n_tokens) FROM prompts) - 1",
        ),
        (VIEWS,),
    ),
    Mutation(
        "sigterm_handler_removed",
        "SIGTERM kills the ingest without recording the run as interrupted",
        replace(
            WORKER, "previous = signal.signal(signal.SIGTERM, handler)", "previous = signal.getsignal(signal.SIGTERM)"
        ),
        (f"{RELIABILITY}::test_sigint_and_sigterm_mark_the_run_interrupted_and_resume",),
    ),
    Mutation(
        "grouped_query_heads_tiled",
        "key/value heads shared as tiles (head h reads kv head h % H_kv) instead of in groups",
        (
            Edit(MODEL, "k_per_head = k.repeat_interleave(group, dim=2)", "k_per_head = k.repeat(1, 1, group, 1)"),
            Edit(MODEL, "v_per_head = v.repeat_interleave(group, dim=2)", "v_per_head = v.repeat(1, 1, group, 1)"),
        ),
        (PARITY, VIEWS),
    ),
    Mutation(
        "view_grouped_query_heads_tiled",
        "the attention direct-effect view maps query head h to kv head h % H_kv",
        replace(
            "queries/support/30_direct_effects.sql",
            "(f.head // (m.n_heads // m.n_kv_heads))::BIGINT",
            "(f.head % m.n_kv_heads)::BIGINT",
        ),
        (VIEWS,),
    ),
    Mutation(
        "view_layernorm_mean_not_removed",
        "the closed-form final-residual gradient skips LayerNorm's mean removal",
        replace(
            "queries/support/10_weight_factors.sql", "CASE WHEN m.norm = 'layernorm'", "CASE WHEN m.norm = 'rmsnorm'"
        ),
        (VIEWS,),
    ),
    Mutation(
        "final_scale_not_held",
        "the logit-difference backward pass lets gradient flow through the final norm's scale",
        replace(WORKER, "hold = items[0].kind == LOGIT_DIFF", "hold = False"),
        (VIEWS,),
    ),
    Mutation(
        "next_token_loss_misaligned",
        "the next-token loss scores each position against its own token instead of the next",
        replace(
            "ingest/objective.py",
            "F.cross_entropy(logits[b, : n - 1], ids[b, 1:n])",
            "F.cross_entropy(logits[b, 1:n], ids[b, 1:n])",
        ),
        (PARITY, VIEWS),
    ),
    Mutation(
        "attn_norm_scale_stored_squared",
        "the stored scale of the norm before attention is the variance, not its square root",
        replace(MODEL, 'hook("attn_ln.scale", layer, scale)', 'hook("attn_ln.scale", layer, scale**2)'),
        (PARITY, VIEWS),
    ),
    Mutation(
        "wait_ignored",
        "--wait fails like a plain ingest instead of queueing",
        replace(WORKER, "DuckDBWriter(db_path, wait=options.wait)", "DuckDBWriter(db_path, wait=False)"),
        (f"{RELIABILITY}::test_wait_queues_behind_a_running_ingest",),
    ),
    Mutation(
        "resume_stores_committed_prompts_again",
        "a rerun stores again the prompts already committed",
        replace(WORKER, "committed = set() if options.force else writer.committed_keys(model_id)", "committed = set()"),
        (RELIABILITY,),
    ),
    Mutation(
        "interrupt_recorded_as_failure",
        "Ctrl-C or SIGTERM records the run as failed, not interrupted",
        replace(WORKER, 'status, message = "interrupted", str(exc)', 'status, message = "failed", str(exc)'),
        (f"{RELIABILITY}::test_sigint_and_sigterm_mark_the_run_interrupted_and_resume",),
    ),
)


@dataclass
class Outcome:
    mutation: Mutation
    killed_by: list[str]
    error: str | None
    seconds: float

    @property
    def killed(self) -> bool:
        return self.error is None and bool(self.killed_by)


def tree_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    return [Path(p) for p in listed.split("\0") if p and (ROOT / p).is_file()]


def copy_tree(files: list[Path], dest: Path) -> None:
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)


def apply(edits: tuple[Edit, ...], tree: Path) -> str | None:
    """Apply the edits in order; the reason they cannot be applied, or None."""
    for edit in edits:
        path = tree / edit.path
        if not path.is_file():
            return f"{edit.path} does not exist"
        text = path.read_text()
        count = text.count(edit.old)
        if count != 1:
            where = "not found" if count == 0 else f"found {count} times"
            return f"snippet {edit.old.replace(chr(0), '')!r} {where} in {edit.path}"
        path.write_text(text.replace(edit.old, edit.new))
    return None


def run_tests(tree: Path, tests: tuple[str, ...], timeout: float) -> tuple[int, list[str], str]:
    """(pytest exit status, failed test ids, output tail) for the tests, run in `tree`."""
    report = tree / "junit.xml"
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *tests]
    try:
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, [], f"timed out after {timeout:.0f} s"
    failed = []
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                module = case.get("classname", "").rsplit(".", 1)[-1]
                failed.append(f"{module}::{case.get('name')}")
    return proc.returncode, failed, "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])


def check(mutation: Mutation, files: list[Path], scratch: Path, timeout: float) -> Outcome:
    start = time.monotonic()
    tree = Path(tempfile.mkdtemp(prefix=f"{mutation.name}-", dir=scratch))
    try:
        copy_tree(files, tree)
        problem = apply(mutation.edits, tree)
        if problem is not None:
            return Outcome(mutation, [], problem, time.monotonic() - start)
        code, failed, tail = run_tests(tree, mutation.tests, timeout)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    error = None
    if code not in (0, 1) or (code == 1 and not failed):
        error = f"pytest exit {code}, tests did not run cleanly: {tail}"
    return Outcome(mutation, failed, error, time.monotonic() - start)


def compact(test_ids: list[str]) -> str:
    """test_views::test_x[gpt2], test_views::test_x[llama] -> test_views::test_x[gpt2, llama]."""
    grouped: dict[str, list[str]] = defaultdict(list)
    for test in test_ids:
        match = re.fullmatch(r"(.*?)(?:\[(.*)\])?", test)
        assert match is not None
        grouped[match[1]].append(match[2] or "")
    parts = []
    for name, params in grouped.items():
        shown = [p for p in params if p]
        parts.append(f"{name}[{', '.join(shown)}]" if shown else name)
    return "; ".join(parts)


def table(outcomes: list[Outcome]) -> str:
    lines = ["| mutation | bug | killed by | killed |", "|---|---|---|---|"]
    for o in outcomes:
        status = "yes" if o.killed else ("ERROR" if o.error else "NO")
        detail = o.error.splitlines()[0] if o.error else (compact(o.killed_by) or "nothing: it survived")
        lines.append(f"| `{o.mutation.name}` | {o.mutation.bug} | {detail} | {status} |")
    return "\n".join(lines)


def write_markdown(path: Path, body: str) -> None:
    text = path.read_text() if path.exists() else ""
    block = f"{TABLE_START}\n{body}\n{TABLE_END}"
    if TABLE_START in text and TABLE_END in text:
        text = text[: text.index(TABLE_START)] + block + text[text.index(TABLE_END) + len(TABLE_END) :]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutations to check (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--markdown", type=Path, help="rewrite the table between the mutation markers in this file")
    parser.add_argument("--skip-baseline", action="store_true", help="do not run the tests on the unmutated tree")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per pytest run")
    args = parser.parse_args()

    known = {m.name: m for m in MUTATIONS}
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name}: {m.bug}  [{', '.join(m.tests)}]")
        return 0
    unknown = [n for n in args.names if n not in known]
    if unknown:
        parser.error(f"unknown mutation {unknown[0]!r}: see --list")
    chosen = [known[n] for n in args.names] if args.names else list(MUTATIONS)

    files = tree_files()
    with tempfile.TemporaryDirectory(prefix="actwh-mutations-") as tmp:
        scratch = Path(tmp)
        if not args.skip_baseline:
            tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            baseline = check(Mutation("baseline", "none", (), tests), files, scratch, args.timeout)
            if baseline.killed_by or baseline.error:
                print(f"the unmutated tree fails its tests: {baseline.error or compact(baseline.killed_by)}")
                return 2
            print(f"baseline: {len(tests)} test selections pass unmutated ({baseline.seconds:.0f} s)", flush=True)
        outcomes = []
        for mutation in chosen:
            outcome = check(mutation, files, scratch, args.timeout)
            status = "killed" if outcome.killed else ("ERROR" if outcome.error else "SURVIVED")
            print(f"{mutation.name}: {status} ({outcome.seconds:.0f} s)", flush=True)
            outcomes.append(outcome)
    body = table(outcomes)
    print()
    print(body)
    if args.markdown:
        write_markdown(args.markdown, body)
    return 0 if all(o.killed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
