"""Weight tables: a model's standard-layout tensors as long rows, and the residual-stream vectors of its
read and write matrices as lists, written once per checkpoint."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from warehouse.facts import constant_int, constant_name, expand_axes
from warehouse.registry import WEIGHTS, Dimension

# Views read one vocabulary column of the unembedding at a time: storing it column by column lets
# DuckDB's zone maps skip all but that column's rows.
_COLUMN_MAJOR = frozenset({"unembedding"})


def weight_table(name: str, layer: int | None, array: np.ndarray, col_ids: np.ndarray | None = None) -> pa.Table:
    """Rows (location, layer, head, row_index, col_index, value) of one weight tensor in standard layout.

    `col_ids` stores a selection of the output axis: the array holds those columns only, in that order
    (the unembedding columns of chosen tokens, say), and col_index takes their ids.
    """
    spec = WEIGHTS[name]
    if array.ndim != len(spec.shape):
        raise ValueError(f"weight {name} has {array.ndim} axes, the registry says {len(spec.shape)}")
    transposed = name in _COLUMN_MAJOR
    data = np.ascontiguousarray(array.T if transposed else array, dtype=np.float32)
    _, axes = expand_axes([], data.shape)
    if transposed:
        axes = axes[::-1]
    n = data.size
    head, row, col = (
        (axes[0], axes[1], axes[2]) if len(axes) == 3 else (None, axes[0], axes[1] if len(axes) == 2 else None)
    )
    if col_ids is not None and col is not None:
        col = np.asarray(col_ids)[col]
    return pa.table(
        {
            "location": constant_name(name, n),
            "layer": constant_int(layer, n, pa.int16()),
            "head": pa.nulls(n, pa.int16()) if head is None else pa.array(head.astype(np.int16)),
            "row_index": pa.array(row.astype(np.int32)),
            "col_index": pa.nulls(n, pa.int32()) if col is None else pa.array(col.astype(np.int32)),
            "value": pa.array(data.reshape(-1)),
        }
    )


def residual_axis(name: str) -> int | None:
    """Which axis of weight `name` (standard layout) runs over the residual stream's channels where the
    matrix is a layer's or an SAE's read or write of it: -1 for a writer (each row a vector written into the
    residual), -2 for a reader (each column a direction read from it), None for any other weight (vectors,
    the model-wide embeddings and unembedding)."""
    spec = WEIGHTS[name]
    if not spec.has_layers or len(spec.shape) < 2:
        return None
    for axis in (-1, -2):
        if spec.shape[axis] == Dimension.RESIDUAL_STREAM_CHANNELS:
            return axis
    return None


def weight_vector_table(name: str, layer: int | None, array: np.ndarray) -> pa.Table | None:
    """Rows (location, layer, head, vector_index, vector) of one weight tensor in standard layout: one
    FLOAT[d_model] per residual-stream vector (residual_axis: a writer's rows, a reader's columns), the
    same values as weight_table's rows of that row_index (writer) or col_index (reader). None for a weight
    with no residual axis."""
    axis = residual_axis(name)
    if axis is None:
        return None
    if array.ndim != len(WEIGHTS[name].shape):
        raise ValueError(f"weight {name} has {array.ndim} axes, the registry says {len(WEIGHTS[name].shape)}")
    data = np.ascontiguousarray(array if axis == -1 else np.swapaxes(array, -1, -2), dtype=np.float32)
    d_model = data.shape[-1]
    n = data.size // d_model
    per_head = data.shape[-2]
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * d_model)
    return pa.table(
        {
            "location": constant_name(name, n),
            "layer": constant_int(layer, n, pa.int16()),
            "head": pa.nulls(n, pa.int16())
            if data.ndim == 2
            else pa.array(np.repeat(np.arange(data.shape[0], dtype=np.int16), per_head)),
            "vector_index": pa.array(np.tile(np.arange(per_head, dtype=np.int32), n // per_head)),
            "vector": pa.ListArray.from_arrays(offsets, pa.array(data.reshape(-1))),
        }
    )


def weight_rows(name: str, layer: int | None, array: np.ndarray) -> list[tuple[str, pa.Table]]:
    """(table, rows) of one weight tensor: its long rows in `weights`, and its residual-stream vectors in
    `weight_vectors` where it has them (both from the one array)."""
    vectors = weight_vector_table(name, layer, array)
    rows = [("weights", weight_table(name, layer, array))]
    return rows if vectors is None else [*rows, ("weight_vectors", vectors)]
