"""What a model adds to the lake besides activations: its record, the weights the views read, its
vocabulary, and the weight-only factors of each target and distractor token it is asked about."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence

import duckdb
import numpy as np
import pyarrow as pa
import tiktoken

from ingest.checkpoints import LoadedModel
from ingest.factors import FACTOR_WEIGHTS, Weights, direction_factors, mlp_out_norms
from warehouse.registry import INPUT_WEIGHTS, STORED_WEIGHTS
from warehouse.token_text import display_texts
from warehouse.weights import weight_rows, weight_table, weight_vector_table
from warehouse.writer import LakeWriter


def vocab_table(loaded: LoadedModel) -> pa.Table:
    """Every id the tokenizer can spell: its bytes, and its display text as a token on its own."""
    ids, pieces = [], []
    for i in range(loaded.model.config.vocab_size):
        try:
            pieces.append(loaded.tokenizer.decode_single_token_bytes(i))
        except KeyError:
            continue
        ids.append(i)
    return pa.table(
        {
            "token_id": pa.array(ids, pa.int32()),
            "text": pa.array([display_texts([piece])[0] for piece in pieces], pa.string()),
            "bytes": pa.array(pieces, pa.binary()),
        }
    )


def token_columns(tokenizer: tiktoken.Encoding, prompts: Iterable[Sequence[int]]) -> dict[str, pa.Array]:
    """The `tokens` table's text and bytes columns for the ids of consecutive prompts (display texts are
    per prompt: a character split across tokens is shown on the token that completes it)."""
    pieces = [tokenizer.decode_tokens_bytes(list(ids)) for ids in prompts]
    return {
        "text": pa.array([text for prompt in pieces for text in display_texts(prompt)], pa.string()),
        "bytes": pa.array([piece for prompt in pieces for piece in prompt], pa.binary()),
    }


def factor_weights(loaded: LoadedModel) -> Weights:
    """The tensors the factors are computed from, by (location, layer), on the model's device."""
    return {(name, layer): t.detach() for name, layer, t in loaded.model.stored_weights(FACTOR_WEIGHTS)}


def _weight_arrays(loaded: LoadedModel, names: tuple[str, ...]) -> Iterator[tuple[str, int | None, np.ndarray]]:
    tensors = sorted(loaded.model.stored_weights(names), key=lambda item: names.index(item[0]))
    for name, layer, t in tensors:
        yield name, layer, t.detach().cpu().numpy()


def _view_weight_names(unembedding_all: bool, input_weights: bool) -> tuple[str, ...]:
    names = (*STORED_WEIGHTS, "unembedding") if unembedding_all else STORED_WEIGHTS
    return (*names, *INPUT_WEIGHTS) if input_weights else names


def _weight_parts(loaded: LoadedModel, names: tuple[str, ...]) -> Iterator[pa.Table]:
    return (weight_table(name, layer, array) for name, layer, array in _weight_arrays(loaded, names))


def _vector_parts(loaded: LoadedModel, names: tuple[str, ...]) -> Iterator[pa.Table]:
    """The weight_vectors rows of the same arrays as _weight_parts (a table each: one INSERT streams them)."""
    for name, layer, array in _weight_arrays(loaded, names):
        vectors = weight_vector_table(name, layer, array)
        if vectors is not None:
            yield vectors


def add_input_weights(writer: LakeWriter, model_id: int, loaded: LoadedModel) -> None:
    """Store the input-side weights (INPUT_WEIGHTS, with their residual-stream vectors) of a model registered
    without them; nothing when the lake holds them already."""

    def rows(con: duckdb.DuckDBPyConnection) -> Iterator[tuple[str, pa.Table]]:
        held = con.execute(
            "SELECT count(*) FROM weights WHERE model_id = ? AND location = ?", [model_id, INPUT_WEIGHTS[0]]
        ).fetchall()[0][0]
        if not held:
            for name, layer, array in _weight_arrays(loaded, INPUT_WEIGHTS):
                yield from weight_rows(name, layer, array)

    writer.add_model_rows(model_id, rows)


def register_model(
    writer: LakeWriter, loaded: LoadedModel, weights: Weights, unembedding_all: bool, input_weights: bool = False
) -> int:
    """The model's id in the lake, storing its record, view weights (the input side too where
    `input_weights`), vocabulary and neuron write norms the first time this checkpoint is seen."""
    cfg = loaded.model.config
    fields = {
        "family": cfg.family,
        "n_layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "n_heads": cfg.n_heads,
        "n_kv_heads": cfg.n_kv_heads,
        "d_head": cfg.d_head,
        "d_mlp": cfg.d_mlp,
        "vocab_size": cfg.vocab_size,
        "n_ctx": cfg.n_ctx,
        "norm": cfg.norm,
        "config": json.dumps(cfg.as_dict()),
    }
    rows: dict[str, Callable[[], Iterable[pa.Table]]] = {
        "weights": lambda: _weight_parts(loaded, _view_weight_names(unembedding_all, input_weights)),
        "weight_vectors": lambda: _vector_parts(loaded, _view_weight_names(unembedding_all, input_weights)),
        "vocab": lambda: [vocab_table(loaded)],
        "mlp_out_norms": lambda: [mlp_out_norms(weights)],
    }
    return writer.register_model(loaded.name, loaded.checkpoint_hash, fields, rows)


def token_rows(
    weights: Weights, token_ids: Iterable[int], layernorm: bool, unembedding: bool
) -> list[tuple[str, pa.Table]]:
    """Rows new target or distractor tokens add: their direction factors, and their unembedding
    columns (`unembedding` False when the lake already holds every column)."""
    ids = sorted(set(token_ids))
    if not ids:
        return []
    rows = [("direction_factors", direction_factors(weights, v, layernorm)) for v in ids]
    if unembedding:
        columns = weights[("unembedding", None)][:, ids].cpu().numpy()
        rows.append(("weights", weight_table("unembedding", None, columns, col_ids=np.asarray(ids))))
    return rows
