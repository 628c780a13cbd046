"""Fact rows as Arrow: the one place tensors become rows.

Index columns are built with repeat/tile over the tensor's axes (no Python loop per element), in the
natural order of the tensor, which Parquet stores in next to nothing (dictionary, RLE and delta encodings).
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
        ("forward", pa.float32()),
        ("backward", pa.float32()),
    ]
)


def round_to_bfloat16(values: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), still float32: the low 16 bits of
    each value become zero, which halves its Parquet size. NaN stays NaN; values past bfloat16's largest
    finite round to infinity, as the format's own rounding does."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)).view(
        np.float32
    )
    return np.where(np.isnan(values), values, rounded).astype(np.float32, copy=False)


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
