"""Weight tables: a model's standard-layout tensors as long rows, written once per checkpoint."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from warehouse.facts import constant_int, constant_name, expand_axes
from warehouse.registry import WEIGHTS

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
