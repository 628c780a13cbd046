"""How far batching may move a stored value, and the comparisons that hold the tests to it.

A prompt's values come from float32 matmuls and reductions whose summation order the kernels choose: by
the CPU's vector width (AVX2 or AVX-512, in torch's own kernels and in MKL's), by the thread count, and
by the matrix's size, which depends on the other prompts of the batch. So the same prompt stored alone
and in a batch of mixed lengths, by one worker or by four, may differ in its last bits: bit-identical on
an AVX-512 CPU at a fixed thread count, not with AVX2 kernels (ATEN_CPU_CAPABILITY=avx2
MKL_ENABLE_INSTRUCTIONS=AVX2 reproduce it on any x86 CPU) or another thread count.

The bound is relative to the largest |value| of the tensor the value belongs to (one location, layer and
pass of one prompt), because a reordered sum moves its result by a few float32 units of its terms'
magnitude, not of its own: a gradient that is a sum of nearly cancelling terms (a norm scale's) moves
most. The largest seen, over both test models, 1 to 3 threads and AVX2 or AVX-512 kernels, was 1.08e-5
(the final norm scale's gradient); the bound is 2^-14 = 6.1e-5. A bug that stores another prompt's,
token's or pass's value misses it by orders of magnitude.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# The README's "Batching changes a value only in its last bits" states this bound.
BATCHING_RTOL = 2**-14  # 6.1e-5 of the largest |value| of the value's tensor


def assert_close(got: np.ndarray, expect: np.ndarray, what: str) -> None:
    """`got` and `expect` (one tensor's values, same shape) differ by at most BATCHING_RTOL of the
    largest |expect|; NaN where the other is NaN."""
    got, expect = np.asarray(got, np.float64), np.asarray(expect, np.float64)
    assert got.shape == expect.shape, f"{what}: shape {got.shape} != {expect.shape}"
    nan = np.isnan(expect)
    assert np.array_equal(np.isnan(got), nan), f"{what}: missing values differ"
    diff = np.abs(got[~nan] - expect[~nan])
    scale = np.abs(expect[~nan]).max(initial=0.0)
    worst = diff.max(initial=0.0)
    assert worst <= BATCHING_RTOL * scale, (
        f"{what}: max |diff| {worst:.3g} is {worst / max(scale, 1e-300):.3g} of max |value| {scale:.3g} "
        f"(batching allows {BATCHING_RTOL:.3g})"
    )


def _group_ids(table: pa.Table, columns: list[str]) -> np.ndarray:
    """One integer per row, equal where the rows agree on `columns` (NULL a value of its own)."""
    if not columns:
        return np.arange(table.num_rows)
    codes = [
        pc.dictionary_encode(table[c].combine_chunks(), null_encoding="encode").indices.to_numpy() for c in columns
    ]
    return np.unique(np.stack(codes, axis=1), axis=0, return_inverse=True)[1].reshape(-1)


def assert_tables_match(got: pa.Table, expect: pa.Table, values: list[str], tensor: list[str]) -> None:
    """Two tables of the same rows in the same order: every column but `values` equal, each column of
    `values` within BATCHING_RTOL of the largest |value| among the rows that agree on `tensor` (the
    columns naming one captured tensor; [] for a value of its own)."""
    assert got.num_rows == expect.num_rows, f"{got.num_rows} rows, expected {expect.num_rows}"
    assert got.column_names == expect.column_names
    for column in got.column_names:
        if column not in values:
            assert got[column].equals(expect[column]), f"column {column} differs"
    groups = _group_ids(expect, tensor)
    for column in values:
        a = got[column].to_numpy(zero_copy_only=False).astype(np.float64)
        b = expect[column].to_numpy(zero_copy_only=False).astype(np.float64)
        nan = np.isnan(b)
        assert np.array_equal(np.isnan(a), nan), f"column {column}: missing values differ"
        a, b, g = a[~nan], b[~nan], groups[~nan]
        scale = np.zeros(groups.max(initial=-1) + 1)
        np.maximum.at(scale, g, np.abs(b))
        ratio = np.abs(a - b) / np.maximum(scale[g], 1e-300)
        bad = ratio > BATCHING_RTOL
        if bad.any():
            worst = int(np.flatnonzero(~nan)[ratio.argmax()])
            row = {c: expect[c][worst].as_py() for c in expect.column_names}
            raise AssertionError(
                f"column {column}: {int(bad.sum())} values differ by more than batching allows; worst "
                f"{ratio.max():.3g} of its tensor's max |value| (allowed {BATCHING_RTOL:.3g}), at {row}"
            )
