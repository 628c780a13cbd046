"""Stored rows give back the tensors the model captured, whatever the batch a prompt ran in.

Every registry location is ingested forward and backward through the CLI, each (location, layer, pass)
tensor is rebuilt from its rows by a numpy scatter over (token, token2, head, node_index), and compared
with a Recorder run in-process on the prompt alone: every cell present, no cell twice, no non-causal pair,
each value within the batching bound of tests/batching.py (float32 summation order, which the CPU's
vector width, the thread count and the batch's shapes choose). Batch size 8 with mixed lengths must store
the same rows as batch size 1, values within the same bound. Both with the built-in tiny GPT-2 and with a
grouped-query Llama checkpoint (value heads fewer than query heads).
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli import main
from ingest import capture
from ingest.capture import LOGITS_TOP_K, CaptureSpec, Recorder
from ingest.checkpoints import LoadedModel, load_model
from ingest.objective import per_prompt_objective
from tests.batching import assert_close, assert_tables_match
from tests.hf_checkpoints import llama_checkpoint
from warehouse import db
from warehouse.registry import LOCATIONS, PRE_NORM_LOCATIONS, PassType

MODEL = "gpt2-tiny"
GPT2_LOCATIONS = {name: LOCATIONS[name] for name in PRE_NORM_LOCATIONS}
ALL_LOCATIONS = ",".join(GPT2_LOCATIONS)
# Two objectives, each a run of prompts of mixed lengths (1 to 20 tokens): the worker splits batches where
# the objective changes, so the first eight share one padded batch at --batch-size 8.
PROMPTS = [
    {"prompt": "Hello there"},
    {"prompt": "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen"},
    {"prompt": "The quick brown fox jumps over the lazy dog."},
    {"prompt": "Lorem ipsum dolor sit amet"},
    {"prompt": "In 1969, the first humans walked on the Moon; the mission was called Apollo 11"},
    {"prompt": "a b"},
    {"prompt": "SELECT * FROM activations WHERE dst = 'mlp_post_act'"},
    {"prompt": "It was the best of times, it was the worst"},
    {"prompt": "The capital of France is", "target": " Paris", "distractor": " London"},
    {"prompt": "x", "target": " Rome"},
    {"prompt": "When Mary and John went to the store, John gave a drink to", "target": " Mary"},
    {"prompt": "A", "target": " Berlin", "distractor": " John"},
]
KEYS = ["prompt_id", "token", "token2", "head", "node_index", "value"]


@pytest.fixture(scope="module", params=["gpt2-tiny", "llama-gqa"])
def model_name(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "gpt2-tiny":
        return request.param
    return str(llama_checkpoint(tmp_path_factory.mktemp("llama") / "checkpoint").path)


@pytest.fixture(scope="module")
def model(model_name: str) -> LoadedModel:
    return load_model(model_name)


def _ingest(tmp: Path, name: str, model: str, batch_size: int) -> Path:
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    db = tmp / f"{name}.duckdb"
    result = CliRunner().invoke(
        main,
        [
            "ingest",
            "--db",
            str(db),
            "--model",
            model,
            "--prompts",
            str(prompts),
            "--locations",
            ALL_LOCATIONS,
            "--batch-size",
            str(batch_size),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    return db


# A prompt's rows reach the writer in record batches of about ROWS_PER_BATCH rows, split between query
# tokens; at its real size (2^20) no test prompt is split. Shrunk for the batch-size-1 store, which is
# checked cell by cell: every location's rows split, token-pair rows mid-prompt (a chunk's queries start
# past 0), several queries a chunk at some lengths and one at others.
SPLIT_ROWS = 200


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory, model_name: str) -> dict[int, Path]:
    tmp = tmp_path_factory.mktemp("roundtrip")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(capture, "ROWS_PER_BATCH", SPLIT_ROWS)
        split = _ingest(tmp, "batch1", model_name, 1)
    return {1: split, 8: _ingest(tmp, "batch8", model_name, 8)}


def _expected(loaded: LoadedModel, spec: dict) -> tuple[dict, dict, np.ndarray]:
    """What the Recorder captures for the prompt alone (forward, gradients, last-token logits)."""
    tok = loaded.tokenizer
    ids = tok.encode_ordinary(spec["prompt"])
    target = tok.encode_ordinary(spec["target"])[0] if "target" in spec else None
    distractor = tok.encode_ordinary(spec["distractor"])[0] if "distractor" in spec else None
    everything = CaptureSpec({n: (PassType.FORWARD, PassType.BACKWARD) for n in GPT2_LOCATIONS})
    rec = Recorder(everything, backward=True)
    batch, lengths = torch.tensor([ids]), torch.tensor([len(ids)])
    logits = loaded.model.forward(batch, lengths, rec, hold_final_scale=target is not None)
    per_prompt_objective(logits, batch, lengths, [target], [distractor]).sum().backward()
    forward = {k: v[0].numpy() for k, v in rec.forward.items()}
    grads = {k: v[0].numpy() for k, v in rec.gradients().items()}
    return forward, grads, logits.detach()[0, -1].numpy()


def _rows(con: duckdb.DuckDBPyConnection, prompt_id: int) -> dict[tuple[str, int | None, str], dict]:
    table = con.sql(
        "SELECT dst::VARCHAR AS dst, layer, pass_type::VARCHAR AS pass, node_type::VARCHAR AS node_type, "
        f"{', '.join(KEYS)} FROM activations WHERE prompt_id = $id ORDER BY ALL",
        params={"id": prompt_id},
    ).to_arrow_table()
    out: dict[tuple[str, int | None, str], dict] = {}
    keys = list(zip(*(table[c].to_pylist() for c in ("dst", "layer", "pass")), strict=True))
    for key in dict.fromkeys(keys):
        mask = np.array([k == key for k in keys])
        sub = table.filter(mask)
        out[key] = {c: sub[c].to_numpy(zero_copy_only=False) for c in [*KEYS, "node_type"]}
    return out


def _rebuild(rows: dict, shape: tuple[int, ...], n_tok_axes: int, head_axis: int | None) -> np.ndarray:
    """Scatter rows into a NaN-filled tensor of the captured shape (token axes cut to the prompt)."""
    out = np.full(shape, np.nan, dtype=np.float32)
    index: list[np.ndarray] = [rows["token"].astype(np.int64)]
    if n_tok_axes == 2:
        index.append(rows["token2"].astype(np.int64))
    if head_axis is not None:
        index.append(rows["head"].astype(np.int64))
    index.append(rows["node_index"].astype(np.int64))
    flat = np.ravel_multi_index(index, shape)
    assert np.unique(flat).size == flat.size, "a cell is stored twice"
    out.reshape(-1)[flat] = rows["value"]
    return out


def _prompt_ids(con: duckdb.DuckDBPyConnection) -> list[int]:
    return [r[0] for r in con.execute("SELECT prompt_id FROM prompts ORDER BY prompt_id").fetchall()]


def test_every_location_rebuilds_what_the_model_captured(stores: dict[int, Path], model: LoadedModel) -> None:
    con = db.connect(stores[1], read_only=True)
    try:
        prompt_ids = _prompt_ids(con)
        assert len(prompt_ids) == len(PROMPTS)
        for prompt_id, spec in zip(prompt_ids, PROMPTS, strict=True):
            forward, grads, last_logits = _expected(model, spec)
            rows = _rows(con, prompt_id)
            n = len(model.tokenizer.encode_ordinary(spec["prompt"]))
            checked = set()
            for pass_type, captured in (("forward", forward), ("backward", grads)):
                for (name, layer), tensor in captured.items():
                    loc = LOCATIONS[name]
                    if name == "logits" or (pass_type == "backward" and not loc.has_backward):
                        continue
                    key = (loc.dst, layer, pass_type)
                    assert key in rows, f"prompt {prompt_id}: no rows for {key}"
                    expect = tensor[:n, :n] if loc.n_token_axes == 2 else tensor[:n]
                    got = _rebuild(rows.pop(key), expect.shape, loc.n_token_axes, loc.head_axis)
                    if loc.n_token_axes == 2:  # only causal pairs are stored
                        causal = np.tril(np.ones((n, n), dtype=bool))
                        assert np.isnan(got[~causal]).all(), f"{key}: a non-causal pair was stored"
                        got, expect = got[causal], expect[causal]
                    assert not np.isnan(got).any(), f"{key}: cells missing"
                    assert_close(got, expect, f"prompt {prompt_id} {key}")
                    checked.add((name, pass_type))
            _check_logits(rows.pop(("logits", None, "forward")), last_logits, n, model, spec)
            assert not rows, f"rows of no captured tensor: {sorted(rows)}"
            wanted = {(name, "forward") for name in GPT2_LOCATIONS if name != "logits"} | {
                (name, "backward") for name, loc in GPT2_LOCATIONS.items() if loc.has_backward and name != "logits"
            }
            # the final scale has no gradient when the objective holds it constant
            missing = wanted - checked - {("resid.ln_f.scale", "backward")}
            assert not missing, f"prompt {prompt_id}: not checked {sorted(missing)}"
    finally:
        con.close()


def _check_logits(rows: dict, last: np.ndarray, n: int, model: LoadedModel, spec: dict) -> None:
    """The last token's top-k ids plus the target and distractor, with their exact logits."""
    tok = model.tokenizer
    assert (rows["token"] == n - 1).all()
    extra = {tok.encode_ordinary(spec[k])[0] for k in ("target", "distractor") if k in spec}
    top = set(np.argsort(-last, kind="stable")[:LOGITS_TOP_K].tolist())
    assert set(rows["node_index"].tolist()) == top | extra
    assert_close(rows["value"], last[rows["node_index"]], "last-token logits")
    assert set(rows["node_type"]) == {"vocab_token"}


def test_batch_size_changes_no_row_and_no_value_beyond_the_batching_bound(stores: dict[int, Path]) -> None:
    """Batch size 1 and batch size 8 (mixed lengths, padded) store the same rows, values within the bound
    of their tensor (one prompt's location, layer and pass)."""
    tables = []
    for size in (1, 8):
        con = db.connect(stores[size], read_only=True)
        try:
            first = _prompt_ids(con)[0]
            tables.append(
                con.sql(
                    "SELECT prompt_id - $first AS p, token, token2, layer, head, node_type::VARCHAR AS node_type, "
                    "node_index, dst::VARCHAR AS dst, pass_type::VARCHAR AS pass_type, value FROM activations "
                    "ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9",
                    params={"first": first},
                ).to_arrow_table()
            )
        finally:
            con.close()
    one, eight = tables
    assert one.num_rows > 0
    assert_tables_match(eight, one, ["value"], ["p", "dst", "layer", "pass_type"])
