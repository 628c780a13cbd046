"""Warehouse.cache against TransformerLens itself: the same random-weight checkpoint (a GPT-2 and a rotary
grouped-query Llama) ingested with actwh and loaded into TransformerLens 4.3 offline, run on the stored
tokens; every key, gradient and analysis of the stored cache equals TransformerLens' to float32 tolerance.

TransformerLens loads the checkpoint with its default LayerNorm folding (the final norm's gain moves into
W_U, which `logit_attrs` reads) and no weight centring or value-bias folding, which would change the
activations themselves.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ingest.prompts import PromptInput
from ingest.worker import IngestOptions, ingest
from queries.api import Warehouse
from queries.streaming import QueryError
from tests.hf_checkpoints import Checkpoint, gpt2_checkpoint, llama_checkpoint
from warehouse.hook_names import model_hooks
from warehouse.registry import PRE_NORM_LOCATIONS

torch = pytest.importorskip("torch")
pytest.importorskip("transformer_lens")
# TransformerLens says its norms' backward hooks take a slower path; numerics are checked here anyway
pytestmark = pytest.mark.filterwarnings("ignore:Backward hooks on hook_scale")

# Two prompts of one length (a batch) with different pairs, and a longer one.
PROMPTS = [
    PromptInput("The capital of France is", " Paris", " London"),
    PromptInput("The capital of France is", " Rome", " Berlin"),
    PromptInput("When Mary and John went to the store, John gave a drink to", " Mary", " John"),
]
CHECKPOINTS = {"gpt2": gpt2_checkpoint, "llama": llama_checkpoint}
# TransformerLens puts a BOS before GPT-2's prompts by default; the test Llama's tokenizer declares none
PREPEND_BOS = {"gpt2": True, "llama": None}
# float32 storage and two float32 forwards that order their sums differently: worst observed 3e-6 of the
# tensor's largest |value|; a wrong head, position, scale or sign is off by 1e-1 and more.
REL = 1e-4


@dataclass
class Stored:
    name: str
    checkpoint: Checkpoint
    wh: Warehouse
    full: list[int]  # prompt ids of the run storing every location, forward and backward, in PROMPTS order
    default: list[int]  # the first prompt, default capture
    bridge: Any  # transformer_lens TransformerBridge on the same checkpoint


def _ingest(
    path: Path, model: Path, prompts: list[PromptInput], locations: list[str] | None, bos: bool | None
) -> list[int]:
    options = IngestOptions(model=str(model), locations=locations, progress=False, prepend_bos=bos)
    report = ingest(path, prompts, options)
    assert report.stored == len(prompts) and not report.skipped, report
    wh = Warehouse(path)
    return [r[0] for r in wh.sql("SELECT prompt_id FROM prompts WHERE run_id = ? ORDER BY prompt_id",
                                 [report.run_id], output="rows")]  # fmt: skip


# the rotary grouped-query model doubles the module's time: it runs with the slow checks
@pytest.fixture(scope="module", params=["gpt2", pytest.param("llama", marks=pytest.mark.slow)])
def stored(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    from transformer_lens.model_bridge import TransformerBridge

    tmp = tmp_path_factory.mktemp(request.param)
    checkpoint = CHECKPOINTS[request.param](tmp / "checkpoint")
    path = tmp / "w.duckdb"
    full = _ingest(path, checkpoint.path, PROMPTS, PRE_NORM_LOCATIONS, PREPEND_BOS[request.param])
    default = _ingest(path, checkpoint.path, PROMPTS[:1], None, PREPEND_BOS[request.param])
    bridge = TransformerBridge.boot_transformers(str(checkpoint.path), hf_model=checkpoint.model, device="cpu")
    bridge.enable_compatibility_mode(
        disable_warnings=True, fold_ln=True, center_writing_weights=False, center_unembed=False, fold_value_biases=False
    )
    yield Stored(request.param, checkpoint, Warehouse(path), full, default, bridge)


def _close(ours: torch.Tensor, theirs: torch.Tensor, what: str, rel: float = REL) -> None:
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} != TransformerLens' {tuple(theirs.shape)}"
    finite = torch.isfinite(theirs)
    assert torch.equal(finite, torch.isfinite(ours)), f"{what}: infinities differ"
    assert torch.equal(theirs[~finite], ours[~finite]), f"{what}: infinities differ in sign"
    scale = max(theirs[finite].abs().max().item(), 1e-6) if finite.any() else 1.0
    error = (ours[finite] - theirs[finite]).abs().max().item() if finite.any() else 0.0
    assert error <= rel * scale, f"{what}: max error {error:.3g} against values up to {scale:.3g}"


def _transformer_lens(stored: Stored, ids: list[int]) -> tuple[Any, dict[str, torch.Tensor]]:
    """TransformerLens' cache of the stored tokens, and its gradients of the summed logit differences (each
    prompt's gradients are those of its own objective: prompts do not interact)."""
    with stored.wh.cache(ids) as cache:
        tokens, targets, distractors = cache.tokens, cache.target_ids, cache.distractor_ids
    _, tl_cache = stored.bridge.run_with_cache(tokens)
    grads: dict[str, torch.Tensor] = {}
    stored.bridge.add_caching_hooks(cache=grads, incl_bwd=True)
    # actwh's logit-difference objective holds the final norm's scale constant
    stored.bridge.add_hook("ln_final.hook_scale", lambda scale, hook: scale.detach())
    try:
        logits = stored.bridge(tokens)
        rows = torch.arange(len(ids))
        (logits[rows, -1, targets] - logits[rows, -1, distractors]).sum().backward()
    finally:
        stored.bridge.reset_hooks()
    return tl_cache, {k: v for k, v in grads.items() if k.endswith("_grad")}


def _BLOCK_ENDS(match: re.Match[str]) -> str:  # noqa: N802 - a substitution table
    return "hook_in" if match.group(1) == "pre" else "hook_out"


def test_every_key_and_gradient_equals_transformer_lens(stored: Stored) -> None:
    ids = stored.full[:2]
    tl_cache, tl_grads = _transformer_lens(stored, ids)
    with stored.wh.cache(ids) as cache:
        assert cache.tokens.shape == (2, tl_cache["blocks.0.hook_resid_pre"].shape[1])
        names = list(cache.keys())
        assert {n for n in names if not n.endswith("_grad")} <= set(tl_cache.keys())
        assert len(names) > 40 and "blocks.1.attn.hook_z_grad" in names
        for name in names:
            if name.endswith("_grad"):
                # the bridge fires the residual's gradient at the block's input and output hooks only
                theirs = (
                    tl_grads[name]
                    if name in tl_grads
                    else tl_grads[re.sub(r"hook_resid_(pre|post)", _BLOCK_ENDS, name)]
                )
                if "hook_resid_mid" in name:
                    # the bridge fires resid_mid's gradient on the MLP's branch only; the residual's own
                    # gradient (HookedTransformer's) adds what reaches it through the skip connection
                    theirs = theirs + tl_grads[name.replace("hook_resid_mid", "hook_out")]
                if name.endswith("hook_pattern_grad"):
                    # TransformerLens' gradient reaches masked probabilities too (they multiply values);
                    # the warehouse stores causal pairs only
                    theirs = theirs.tril()
                _close(cache[name], theirs, name)
            else:
                _close(cache[name], tl_cache[name], name)


def test_short_keys_and_dict_interface(stored: Stored) -> None:
    with stored.wh.cache(stored.full[0]) as cache:
        n_layers = cache.cfg.n_layers
        assert torch.equal(cache["pattern", 1], cache["blocks.1.attn.hook_pattern"])
        assert torch.equal(cache["resid_post", -1], cache[f"blocks.{n_layers - 1}.hook_resid_post"])
        assert torch.equal(cache["scale"], cache["ln_final.hook_scale"])
        assert torch.equal(cache["scale1ln2"], cache["blocks.1.ln2.hook_scale"])
        assert torch.equal(cache["v0"], cache["blocks.0.attn.hook_v"])
        assert torch.equal(cache["post", 0, "mlp"], cache["blocks.0.mlp.hook_post"])
        assert len(cache) == len(list(cache)) == len(list(cache.items()))
        cache.remove_batch_dim()
        assert cache["blocks.0.hook_resid_post"].shape == (cache.n_tokens, cache.cfg.d_model)
        assert cache["blocks.0.attn.hook_pattern"].ndim == 3
        assert cache.to("cpu") is cache


def test_keys_load_lazily(stored: Stored) -> None:
    with stored.wh.cache(stored.full[2]) as cache:
        assert cache.cache_dict == {}
        assert "blocks.0.attn.hook_pattern" in cache and len(list(cache.keys())) == len(cache)
        assert cache.cache_dict == {}
        cache["blocks.1.attn.hook_pattern"]
        assert list(cache.cache_dict) == ["blocks.1.attn.hook_pattern"]


def test_reading_whole_equals_reading_key_by_key(stored: Stored, monkeypatch: pytest.MonkeyPatch) -> None:
    """items() reads a small cache in one query; a large one (here: any, BULK_VALUES 0) key by key."""
    import queries.cache

    ids = stored.full[:2]
    with stored.wh.cache(ids) as whole:
        read_whole = dict(whole.items())
    monkeypatch.setattr(queries.cache, "BULK_VALUES", 0)
    with stored.wh.cache(ids) as by_key:
        items = by_key.items()
        first = next(items)
        assert list(by_key.cache_dict) == [first[0]]  # nothing read ahead of the iteration
        read_by_key = dict([first, *items])
    assert list(read_whole) == list(read_by_key)
    for name, tensor in read_whole.items():
        assert torch.equal(tensor, read_by_key[name]), name


def _analyses(cache: Any, n: int, targets: list[int], distractors: list[int]) -> dict[str, Any]:
    pair = torch.tensor(targets), torch.tensor(distractors)
    return {
        "accumulated_resid": cache.accumulated_resid(return_labels=True),
        "accumulated_resid apply_ln (final, recomputed)": cache.accumulated_resid(apply_ln=True, return_labels=True),
        "accumulated_resid 1 mid mlp_input apply_ln pos -1": cache.accumulated_resid(
            1, incl_mid=True, mlp_input=True, apply_ln=True, pos_slice=-1, return_labels=True
        ),
        "decompose_resid": cache.decompose_resid(return_labels=True),
        "decompose_resid 1 mlp_input attn apply_ln": cache.decompose_resid(
            1, mlp_input=True, mode="attn", apply_ln=True, incl_embeds=False, return_labels=True
        ),
        "apply_ln_to_stack ln2 of layer 1, pos (1, 3)": cache.apply_ln_to_stack(
            cache.accumulated_resid(1, pos_slice=(1, 3)), 1, mlp_input=True, pos_slice=(1, 3)
        ),
        "stack_head_results": cache.stack_head_results(return_labels=True, incl_remainder=True),
        "stack_head_results 1 apply_ln pos [0, 2]": cache.stack_head_results(1, apply_ln=True, pos_slice=[0, 2]),
        "stack_head_results 0": cache.stack_head_results(0),
        "stack_neuron_results": cache.stack_neuron_results(n, return_labels=True, incl_remainder=True),
        "stack_neuron_results 1 neurons 3 apply_ln mlp_input": cache.stack_neuron_results(
            1, neuron_slice=3, apply_ln=True, incl_remainder=True, mlp_input=True, return_labels=True
        ),
        "stack_activation pattern": cache.stack_activation("pattern"),
        "stack_activation resid_post 1": cache.stack_activation("resid_post", 1),
        "get_full_resid_decomposition apply_ln": cache.get_full_resid_decomposition(apply_ln=True, return_labels=True),
        "get_full_resid_decomposition 1 mlp_input no neurons": cache.get_full_resid_decomposition(
            1, mlp_input=True, expand_neurons=False, return_labels=True
        ),
        "logit_attrs of the decomposition, stored pairs": cache.logit_attrs(cache.decompose_resid(), *pair),
        "logit_attrs of the heads at the last token, one token": cache.logit_attrs(
            cache.stack_head_results(pos_slice=-1), targets[0], pos_slice=-1
        ),
    }


def _embedding_merged(theirs: torch.Tensor, labels: list[str]) -> tuple[torch.Tensor, list[str]]:
    """TransformerLens' stack with its embed and pos_embed components summed into one, as a model with
    learned positions stores them."""
    if "pos_embed" not in labels:
        return theirs, labels
    i = labels.index("embed")
    merged = torch.cat([theirs[:i], theirs[i : i + 1] + theirs[i + 1 : i + 2], theirs[i + 2 :]])
    return merged, [*labels[:i], "embed+pos_embed", *labels[i + 2 :]]


def test_every_analysis_equals_transformer_lens(stored: Stored) -> None:
    ids = stored.full[:2]
    tl_cache, _ = _transformer_lens(stored, ids)
    with stored.wh.cache(ids) as cache:
        n, pair = cache.cfg.n_layers, (cache.target_ids, cache.distractor_ids)
        ours = _analyses(cache, n, *pair)
        theirs = _analyses(tl_cache, n, *pair)
    for what, value in ours.items():
        reference = theirs[what]
        if isinstance(value, tuple):
            reference = _embedding_merged(*reference)
            assert value[1] == reference[1], f"{what}: labels {value[1]} != TransformerLens' {reference[1]}"
            value, reference = value[0], reference[0]
        if what.startswith("logit_attrs of the decomposition") and stored.name == "gpt2":
            reference = torch.cat([reference[:1] + reference[1:2], reference[2:]])
        _close(value, reference, what)


def test_logit_attrs_equal_the_direct_effect_views(stored: Stored) -> None:
    prompt_id = stored.full[2]
    with stored.wh.cache(prompt_id) as cache:
        stack, labels = cache.get_full_resid_decomposition(pos_slice=-1, return_labels=True)
        attrs = cache.logit_attrs(stack, cache.target_ids[0], cache.distractor_ids[0], pos_slice=-1)[:, 0]
        n_tokens = cache.n_tokens
    by_label = dict(zip(labels, attrs.tolist(), strict=True))
    last = [prompt_id, n_tokens - 1]
    with stored.wh.session() as wh:
        neurons = wh.sql(
            "SELECT layer, node_index, value FROM mlp_write_to_final_residual_grad WHERE prompt_id = ? AND token = ?",
            last,
            output="rows",
        )
        heads = wh.sql(
            "SELECT layer, node_index, sum(value) FROM unflattened_attn_write_to_final_residual_grad"
            " WHERE prompt_id = ? AND token = ? GROUP BY ALL",
            last,
            output="rows",
        )
        (embedding,) = wh.sql(
            "SELECT value FROM resid_post_embedding_proj_to_final_residual_grad WHERE prompt_id = ?",
            [prompt_id],
            output="rows",
        )
    views = {f"L{layer}N{node}": value for layer, node, value in neurons}
    views |= {f"L{layer}H{head}": value for layer, head, value in heads}
    views[next(label for label in labels if label.startswith("embed"))] = embedding[0]
    assert len(views) == len(labels) - 1  # all but the biases
    worst = max(abs(by_label[label] - value) for label, value in views.items())
    assert worst <= REL * max(abs(v) for v in views.values()), worst


def test_a_location_not_stored_names_the_locations_that_store_it(stored: Stored) -> None:
    from queries.cache import MissingActivation

    with stored.wh.cache(stored.default[0]) as cache:
        assert "blocks.0.attn.hook_pattern" in cache and "blocks.0.attn.hook_z" not in cache
        with pytest.raises(MissingActivation, match=re.escape("--locations attn.v_out:forward")) as raised:
            cache["z", 0]
        assert "\n" not in str(raised.value)
        with pytest.raises(MissingActivation, match=re.escape("--locations attn.v_out:forward")):
            cache.stack_head_results()
        with pytest.raises(MissingActivation, match=re.escape("--locations resid.delta_attn:forward")):
            cache.decompose_resid()
        with pytest.raises(MissingActivation, match="not a TransformerLens hook"):
            cache["blocks.0.hook_nonsense"]
        if stored.name == "gpt2":
            with pytest.raises(MissingActivation, match="blocks.0.hook_resid_pre"):
                cache["hook_pos_embed"]


def test_prompts_of_different_lengths_or_unknown_ids_are_refused(stored: Stored) -> None:
    from warehouse.db import WarehouseError

    with pytest.raises(WarehouseError, match="different lengths"):
        stored.wh.cache([stored.full[0], stored.full[2]])
    with pytest.raises(WarehouseError, match="no prompt with id 999"):
        stored.wh.cache(999)
    with pytest.raises(WarehouseError, match="not in run"):
        stored.wh.cache(stored.full[0], run_id=stored.full[0] + 12345)


def test_tl_hooks_and_activations_by_hook_match_the_cache(stored: Stored) -> None:
    prompt_id = stored.full[2]
    with stored.wh.session() as wh, wh.cache(prompt_id) as cache:
        view = wh.sql("SELECT hook_name, dst, layer, pass_type, scale FROM tl_hooks", output="rows")
        names = {r[0] for r in view}
        # the SQL view and the Python table are generated from one list: they agree name by name
        python = model_hooks(cache.model_config)
        assert {r[0]: (r[1], r[2], r[3]) for r in view} == {
            n: (h.dst, h.layer, h.pass_type.value) for n, h in python.items()
        }
        assert max(abs(r[4] - python[r[0]].scale) for r in view) < 1e-6
        assert set(cache.keys()) <= names
        for name in ("blocks.1.attn.hook_rot_q" if stored.name == "llama" else "blocks.1.attn.hook_q",
                     "blocks.1.hook_resid_pre", "blocks.0.attn.hook_pattern_grad"):  # fmt: skip
            rows = wh.sql(
                "SELECT token, coalesce(token2, head, 0), node_index, value FROM activations_by_hook(?)"
                " WHERE prompt_id = ?",
                [name, prompt_id],
                output="rows",
            )
            tensor = cache[name][0]
            if "pattern" in name:  # [head, query, key] from (query, key, head) rows
                rebuilt = {(q, k, h): v for q, k, h, v in rows}
                expected = {(q, k, h): tensor[h, q, k].item() for q, k, h in rebuilt}
            else:
                rebuilt = {(t, h, c): v for t, h, c, v in rows}
                expected = {
                    (t, h, c): (tensor[t, h, c] if tensor.ndim == 3 else tensor[t, c]).item() for t, h, c in rebuilt
                }
            assert len(rebuilt) == tensor.numel() or "pattern" in name
            assert max(abs(rebuilt[k] - expected[k]) for k in rebuilt) <= 1e-6 * max(map(abs, expected.values()))
        with pytest.raises(QueryError, match="no TransformerLens hook blocks.0.hook_nonsense"):
            wh.sql("SELECT * FROM activations_by_hook('blocks.0.hook_nonsense')")
