"""A node as the backward objective (`ingest --objective-node`): the stored gradients and every act-times-grad
view answer "what drives this node", as autograd through transformers does.

Random-weight GPT-2 and grouped-query Llama checkpoints (tests/hf_checkpoints.py), prompts of 1 to 30
tokens in one warehouse, three ingests each: an MLP neuron at the last token, an MLP neuron of layer 0 at
token 2 (so later tokens exist, and the one-token prompt has no token 2 and is skipped) and an attention
node (query, key, head). The oracle (tests/oracle_scalars.py) starts transformers' backward pass from the
same node in float64 and shares no code with actwh. The refusals and the resume key run on the built-in
tiny GPT-2.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ingest.prompts import PromptInput
from ingest.worker import IngestOptions, ingest
from queries import DstNotAvailable, Warehouse
from queries.notes import notes
from tests.hf_checkpoints import Checkpoint, gpt2_checkpoint, llama_checkpoint
from tests.oracle_scalars import Node, expected_scalars
from tests.test_bad_input import assert_one_line_error, assert_skipped, tiny
from warehouse.registry import LOCATIONS, locations_of

transformers = pytest.importorskip("transformers")

PROMPTS = [
    PromptInput("The capital of France is"),
    PromptInput("A"),
    PromptInput("When Mary and John went to the store, John gave a drink to"),
    PromptInput(
        "one two three four five six seven eight nine ten eleven twelve, then the quick brown fox jumps over the"
        " lazy dog"
    ),
]
# run name -> (--objective-node, its location, layer, node index, token, key token): tokens as given
RUNS = {
    "last": ("mlp_post_act:1:5", "mlp.post_act", 1, 5, -1, None),
    "earlier": ("mlp_post_act:0:7@2", "mlp.post_act", 0, 7, 2, None),
    "attention": ("attn_qk_probs:1:2@-2,1", "attn.qk_probs", 1, 2, -2, 1),
}
CHECKPOINTS = {"gpt2": gpt2_checkpoint, "llama": llama_checkpoint}
# Views taken on the logit difference of a target: no rows for a prompt traced from a node.
LOGIT_ONLY = ("logit_diff",)
REL = 1e-4  # as tests/test_views.py: float32 storage against a float64 oracle


@dataclass(frozen=True)
class Prompt:
    prompt_id: int
    ids: list[int]
    node: Node  # the node with its tokens counted from 0 in this prompt


@dataclass
class Stored:
    checkpoint: Checkpoint
    wh: Warehouse
    run_ids: dict[str, int]
    prompts: dict[str, list[Prompt]]
    skipped: dict[str, list[str]]


def _place(given: int, n: int) -> int:
    return given + n if given < 0 else given


# the Llama case is as long again: in the slow suite (.ci/run), GPT-2 in the default one
@pytest.fixture(scope="module", params=["gpt2", pytest.param("llama", marks=pytest.mark.slow)])
def stored(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    tmp = tmp_path_factory.mktemp(request.param)
    checkpoint = CHECKPOINTS[request.param](tmp / "checkpoint")
    # every location of these pre-norm checkpoints, both passes (the SAEs' exist only with one spliced in)
    locations = locations_of(SimpleNamespace(pre_block_norms=True, post_block_norms=False, sae=False))
    path = tmp / "wh"
    run_ids, prompts, skipped = {}, {}, {}
    for run, (spec, location, layer, index, token, key) in RUNS.items():
        options = IngestOptions(model=str(checkpoint.path), locations=locations, progress=False, objective_node=spec)
        report = ingest(path, PROMPTS, options)
        run_ids[run], skipped[run] = report.run_id, [s.text for s in report.skipped]
        assert report.stored + len(report.skipped) == len(PROMPTS), report
        wh = Warehouse(path)
        rows = wh.sql("SELECT prompt_id FROM prompts WHERE run_id = ? ORDER BY prompt_id", [report.run_id], "rows")
        prompts[run] = []
        for (prompt_id,) in rows:
            ids = [
                i
                for (i,) in wh.sql(
                    "SELECT token_id FROM tokens WHERE prompt_id = ? ORDER BY token", [prompt_id], "rows"
                )
            ]
            at = _place(token, len(ids))
            prompts[run].append(Prompt(prompt_id, ids, (location, layer, index, at, key)))
    wh = Warehouse(path)
    with wh.session():
        yield Stored(checkpoint, wh, run_ids, prompts, skipped)


def test_prompts_out_of_the_nodes_reach_are_skipped(stored: Stored) -> None:
    """The one-token prompt has no token 2 and no key token 1: skipped in those runs, stored in the first."""
    assert stored.skipped == {"last": [], "earlier": ["A"], "attention": ["A"]}


def test_the_stored_gradient_of_the_node_is_one_at_its_token_and_nothing_after_it_has_one(stored: Stored) -> None:
    """dL/d(node) = 1 exactly at its place; every stored gradient at a later token is 0 (nothing there
    feeds the node); the objective recorded is the node's stored activation; runs and prompts name it."""
    wh = stored.wh
    for run, (spec, location, layer, index, _, _) in RUNS.items():
        assert wh.sql("SELECT objective FROM runs WHERE run_id = ?", [stored.run_ids[run]], "rows") == [
            (f"node:{spec if '@' in spec else spec + '@-1'}",)
        ]
        dst = LOCATIONS[location].dst
        for prompt in stored.prompts[run]:
            _, _, _, token, key = prompt.node
            node_rows = wh.sql(
                "SELECT forward, backward FROM facts WHERE prompt_id = ? AND dst = ? AND layer = ? AND node_index = ?"
                " AND token = ? AND token2 IS NOT DISTINCT FROM ?",
                [prompt.prompt_id, dst, layer, index, token, key],
                "rows",
            )
            assert len(node_rows) == 1 and node_rows[0][1] == 1.0, (run, prompt, node_rows)
            recorded = wh.sql(
                "SELECT objective, objective_node FROM prompts WHERE prompt_id = ?", [prompt.prompt_id], "rows"
            )
            where = f"{token},{key}" if key is not None else str(token)
            assert recorded == [(pytest.approx(node_rows[0][0], rel=1e-6), f"{dst}:{layer}:{index}@{where}")]
            others = wh.sql(
                "SELECT count(*), max(abs(backward)) FROM facts WHERE prompt_id = ? AND dst = ? AND layer = ?"
                " AND token = ? AND NOT (node_index = ? AND token2 IS NOT DISTINCT FROM ?)",
                [prompt.prompt_id, dst, layer, token, index, key],
                "rows",
            )
            assert others[0][0] > 0 and others[0][1] == 0.0, (run, others)
            later = wh.sql(
                "SELECT count(*), max(abs(backward)) FROM facts WHERE prompt_id = ? AND token > ?"
                " AND backward IS NOT NULL",
                [prompt.prompt_id, token],
                "rows",
            )
            if token < len(prompt.ids) - 1:
                assert later[0][0] > 0 and later[0][1] == 0.0, (run, later)


def _by_prompt(wh: Warehouse, query: str) -> dict[int, dict[tuple, float]]:
    out: dict[int, dict[tuple, float]] = defaultdict(dict)
    for prompt_id, *key, value in wh.sql(query, output="rows"):
        out[prompt_id][tuple(key)] = value
    return out


def test_every_act_times_grad_view_agrees_with_autograd_through_transformers(stored: Stored) -> None:
    """Every derived view's rows of each prompt are the oracle's (its backward pass started from the same
    node): the act-times-grad of embeddings, neurons, attention nodes and layers, the norms and writes, the
    stored final residual's gradient and the objective; the logit-only views have no rows."""
    wh = stored.wh
    table = wh.dsts()
    views = [
        d for d, kind in zip(table["dst"].to_pylist(), table["kind"].to_pylist(), strict=True) if kind == "derived"
    ]
    views = [v for v in views if not v.startswith("online_")]
    rows = {
        v: _by_prompt(wh, f"SELECT prompt_id, token, token2, layer, head, node_index, value FROM {v}") for v in views
    }
    exercised: set[str] = set()
    for run, prompts in stored.prompts.items():
        for prompt in prompts:
            want_all = expected_scalars(stored.checkpoint.model, prompt.ids, None, None, True, prompt.node)
            for view in views:
                want, got = want_all.get(view, {}), rows[view].get(prompt.prompt_id, {})
                what = f"{view}, {run} prompt {prompt.prompt_id} ({len(prompt.ids)} tokens)"
                if not want:
                    assert not got, f"{what}: {len(got)} rows where none are defined"
                    continue
                assert set(got) == set(want), f"{what}: keys differ, e.g. {sorted(set(got) ^ set(want), key=str)[:3]}"
                scale = max(abs(v) for v in want.values()) or 1.0
                worst = max(abs(got[k] - want[k]) for k in want) / scale
                assert worst <= REL, f"{what}: max |diff| {worst:.3g} x max|value|"
                exercised.add(view)
    for view in ("mlp_act_times_grad", "unflattened_attn_act_times_grad", "token_attribution", "loss"):
        assert view in exercised, view
    assert not exercised & {*LOGIT_ONLY, "mlp_write_to_final_residual_grad"}


def test_the_logit_only_views_say_so_in_one_line(stored: Stored) -> None:
    """The node table of a traced prompt leaves the direct effect NULL with the reason; asking for it
    alone raises it; the act-times-grad ranking answers."""
    wh = stored.wh
    prompt = stored.prompts["last"][0]
    table = wh.top_nodes(prompt.prompt_id, k=3)
    assert table.num_rows and table["direct_effect"].null_count == table.num_rows
    said = [n for n in notes(table) if n.startswith("direct_effect")]
    assert len(said) == 1 and "traced from the node mlp_post_act:1:5@" in said[0], notes(table)
    with pytest.raises(DstNotAvailable, match="not from a logit difference"):
        wh.top_nodes(prompt.prompt_id, dst="mlp_write_to_final_residual_grad")


def test_bad_objective_nodes_are_refused_in_one_line(tmp_path: Path) -> None:
    for spec, fragments in (
        ("mlp_post:1:3", ("unknown node dst 'mlp_post'", "mlp_post_act")),
        ("mlp_post_act:2:3", ("layer 2 is out of range", "0..1")),
        ("mlp_post_act:1:128", ("node 128 is out of range", "0..127")),
        ("attn_qk_probs:0:4", ("node 4 is out of range", "0..3")),
        ("attn_query:0:1", ("unknown node dst 'attn_query'",)),
        ("online_autoencoder_latent:0:1", ("no SAE spliced at layer 0", "--sae")),
        ("mlp_post_act:1", ("DST:LAYER:NODE[@TOKEN]",)),
        ("mlp_post_act:1:x", ("are integers",)),
        ("mlp_post_act:1:3@1,0", ("is at one token",)),
    ):
        assert_one_line_error(tiny(tmp_path / "w", "--prompt", "a cat", "--objective-node", spec), *fragments)
    with_target = tiny(tmp_path / "w", "--prompt", "a cat", "--objective-node", "mlp_post_act:1:3", "--target", " the")
    assert_one_line_error(with_target, "drop --target and --distractor")
    no_backward = tiny(tmp_path / "w", "--prompt", "a cat", "--objective-node", "mlp_post_act:1:3", "--no-backward")
    assert_one_line_error(no_backward, "drop --no-backward")
    assert not (tmp_path / "w").exists() or not Warehouse(tmp_path / "w").sql("SELECT * FROM prompts", output="rows")


def test_prompts_the_node_cannot_be_placed_in_are_skipped(tmp_path: Path) -> None:
    """A token (or key) out of a prompt's range, a key after its query, or a line with a target of its
    own: that line is skipped with one warning, the others stored, exit 3."""
    lines = [
        {"prompt": "the cat sat on the mat"},
        {"prompt": "a cat"},
        {"prompt": "one two three four", "target": " five"},
        {"prompt": "x y z w v"},
    ]
    file = tmp_path / "prompts.jsonl"
    file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = tiny(tmp_path / "w", "--prompts", file, "--objective-node", "mlp_post_act:1:3@-3")
    assert_skipped(result, {2: "token -3 is out of range for this 2-token prompt", 3: "has a target"}, stored=2)
    pairs = tiny(tmp_path / "w", "--prompts", file, "--objective-node", "attn_qk_probs:0:1@2,4")
    assert_skipped(
        pairs, {1: "key token 4 is after query token 2", 2: "out of range", 3: "has a target", 4: "after query"}, 0
    )


def test_a_node_objective_is_part_of_the_prompt_key(tmp_path: Path) -> None:
    """A prompt stored with a logit (or next-token) objective is stored again for a node; the same node
    twice stores it once; another node or token stores it again."""
    path = tmp_path / "w"
    prompt = [PromptInput("The cat sat on the mat")]
    base = IngestOptions(model="gpt2-tiny", progress=False, locations=["mlp.post_act"])
    assert ingest(path, prompt, base).stored == 1
    node = dataclasses.replace(base, objective_node="mlp_post_act:1:3")
    assert ingest(path, prompt, node).stored == 1, "a node run took the next-token run's prompt as stored"
    assert (ingest(path, prompt, node).stored, ingest(path, prompt, node).already_stored) == (0, 1)
    assert ingest(path, prompt, dataclasses.replace(node, objective_node="mlp_post_act:1:3@-2")).stored == 1
    assert ingest(path, prompt, dataclasses.replace(node, objective_node="mlp_post_act:1:4")).stored == 1


def _latent_traced(
    model: torch.nn.Module, sae: object, ids: list[int], latent: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Autograd in transformers from the SAE's latent at the last token, encoded by the test's own encoder
    from the site's value: (the embeddings, block 0's neuron activations, each with its gradient; the latent)."""
    from tests.sae_oracle import at_site

    kept: dict[str, torch.Tensor] = {}

    def keep(name: str):  # noqa: ANN202
        def hook(_m: torch.nn.Module, _args: tuple, out: torch.Tensor) -> None:
            out.retain_grad()
            kept[name] = out

        return hook

    handles = [
        model.transformer.drop.register_forward_hook(keep("emb")),
        model.transformer.h[0].mlp.act.register_forward_hook(keep("post")),
    ]
    try:
        with at_site(model, sae, lambda x: kept.setdefault("site", x)):
            model(torch.tensor([ids]))
    finally:
        for handle in handles:
            handle.remove()
    objective = sae.encode(kept["site"][0, len(ids) - 1])[latent]
    objective.backward()
    return kept["emb"], kept["post"], float(objective.detach())


@pytest.mark.slow  # three ingests and an SAE calibrated on the first: about 30 s of CPU
def test_an_sae_latent_as_the_objective_agrees_with_autograd_through_its_encoder(tmp_path: Path) -> None:
    """An SAE latent on GPT-2's residual after block 0 as the objective: its stored gradient is 1 at the last
    token (0 for the other latents there), and the embeddings' and block-0 neurons' act-times-grad equal
    autograd through transformers and the test's own encoder of the site, in float64."""
    from tests.test_sae_capture import ingest_with_saes

    checkpoint = gpt2_checkpoint(tmp_path / "checkpoint")
    row = (
        "res0",
        "saelens",
        "standard",
        "blocks.0.hook_resid_post",
        "resid_post",
        0,
        "resid.post_mlp",
        0,
        128,
        None,
        False,
    )
    prompts = [p for p in PROMPTS if len(p.text) > 1]  # the next-token objective of the first ingest needs two tokens
    locations = ["resid.post_emb", "mlp.post_act"]
    _, (sae,), wh, run_id = ingest_with_saes(tmp_path, checkpoint, prompts, locations, [row])
    longest = wh.sql(
        "SELECT prompt_id, n_tokens FROM prompts WHERE run_id = ? ORDER BY n_tokens DESC", [run_id], "rows"
    )[0]
    query = "SELECT node_index FROM facts WHERE dst = ? AND prompt_id = ? AND token = ? ORDER BY forward DESC LIMIT 1"
    (latent,) = wh.sql(query, ["online_autoencoder_latent", longest[0], longest[1] - 1], "rows")[0]
    options = IngestOptions(
        model=str(checkpoint.path),
        locations=locations,
        saes=[sae.spec],
        objective_node=f"online_autoencoder_latent:0:{latent}",
        progress=False,
    )
    report = ingest(tmp_path / "wh", prompts, options)
    assert report.stored == len(prompts) and not report.skipped, report
    wh = Warehouse(tmp_path / "wh")
    model = copy.deepcopy(checkpoint.model).double()
    fired = 0
    for (prompt_id,) in wh.sql("SELECT prompt_id FROM prompts WHERE run_id = ?", [report.run_id], "rows"):
        ids = [
            i for (i,) in wh.sql("SELECT token_id FROM tokens WHERE prompt_id = ? ORDER BY token", [prompt_id], "rows")
        ]
        last = len(ids) - 1
        grads = wh.sql(
            "SELECT node_index, backward FROM facts WHERE dst = 'online_autoencoder_latent' AND prompt_id = ?"
            " AND token = ?",
            [prompt_id, last],
            "rows",
        )
        emb, post, objective = _latent_traced(model, sae, ids, latent)
        fired += objective > 0
        # latents are stored where they fired: the objective's own row exactly when it did
        assert dict(grads).get(latent) == (1.0 if objective > 0 else None), (grads, objective)
        assert all(g == 0.0 for j, g in grads if j != latent), grads
        want = {
            "token_attribution": {(t, None, None): float(v) for t, v in enumerate((emb * emb.grad).sum(-1)[0])},
            "mlp_act_times_grad": {
                (t, 0, i): float(post[0, t, i] * post.grad[0, t, i])
                for t in range(len(ids))
                for i in range(post.shape[-1])
            },
        }
        for view, expected in want.items():
            got = {
                (t, layer, i if view == "mlp_act_times_grad" else None): v
                for t, layer, i, v in wh.sql(
                    f"SELECT token, layer, node_index, value FROM {view} WHERE prompt_id = ? AND ifnull(layer, 0) = 0",
                    [prompt_id],
                    "rows",
                )
            }
            assert set(got) == set(expected), view
            scale = max(abs(v) for v in expected.values()) or 1.0
            worst = max(abs(got[k] - expected[k]) for k in expected) / scale
            assert worst <= REL, f"{view}, prompt {prompt_id}: {worst:.3g} x max|value|"
        after = "SELECT max(abs(value)) FROM mlp_act_times_grad WHERE prompt_id = ? AND layer = 1"
        assert wh.sql(after, [prompt_id], "rows") == [(0.0,)]  # block 1 reads the site, never writes it
    assert fired, "the latent fired at no prompt's last token: nothing upstream was compared"
