"""Long-format Arrow tables: the one place tensors become rows.

Index columns are built with repeat/tile over the tensor's axes (no Python loop per element), in the
natural order of the tensor, which DuckDB compresses to almost nothing (RLE and bit-packing).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

_NAME = pa.dictionary(pa.int8(), pa.string())

FACT_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.int32()),
        ("token", pa.int16()),
        ("token2", pa.int16()),
        ("layer", pa.int16()),
        ("head", pa.int16()),
        ("node_type", _NAME),
        ("node_index", pa.int32()),
        ("dst", _NAME),
        ("pass_type", _NAME),
        ("value", pa.float32()),
    ]
)


def constant_name(name: str, n: int) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int8)), pa.array([name]))


def constant_int(value: int | None, n: int, type_: pa.DataType) -> pa.Array:
    if value is None:
        return pa.nulls(n, type_)
    return pa.array(np.full(n, value, dtype=type_.to_pandas_dtype()))


def expand_axes(
    leading: list[np.ndarray], trailing_shape: tuple[int, ...]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Index columns for rows = leading selections x every cell of a dense trailing block.

    `leading` holds one index array per selected leading axis (equal lengths, e.g. from np.nonzero);
    returns them repeated per trailing cell, and the trailing axes' indices tiled per selection.
    """
    cells = int(np.prod(trailing_shape)) if trailing_shape else 1
    n = len(leading[0]) if leading else 1
    lead = [np.repeat(a, cells) for a in leading]
    grid = np.indices(trailing_shape).reshape(len(trailing_shape), cells) if trailing_shape else []
    trail = [np.tile(g, n) for g in grid]
    return lead, trail
