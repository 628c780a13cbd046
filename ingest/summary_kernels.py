"""The per-batch summary arithmetic on the CPU, compiled by Numba: one pass over a batch's values for all
figures, one for the example candidates, and insertion into the running best K.

Torch's CPU kernels take a pass (and a temporary) per figure, and a table lookup plus scatter per value
for the histogram: on a 2-core machine the summaries cost 40 % of the ingest that way against under
15 % compiled (BENCHMARKS.md). On a GPU, ingest/summaries.py's torch code runs instead; the two give the
same figures (tests/test_summaries.py runs both on the same batches). The sums of squares and absolute
values are taken in float64 here throughout, a little more exact than the torch code's float32 blocks.
"""

from __future__ import annotations

import numba
import numpy as np

from ingest.summary_tables import pack_where

# Columns taken together through all rows, so their running figures and histograms stay in cache; passed
# to `figures` by its caller, so that the tests can shrink it below their models' widths (512 is wider
# than any of them) and reach the blocks after the first.
COLUMNS = 512


@numba.njit(cache=True, nogil=True)
def figures(
    values: np.ndarray, n_rows: int, base: np.ndarray, step: np.ndarray, n_bins: int, columns: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Column figures of the first `n_rows` rows of (rows, N) float32 `values`: sum, sum of squares and
    of absolute values (float64), min and max (float32), and the (N, n_bins) int32 histogram whose bin of
    a value is base[its top 16 bits], one more when value >= step[its top 16 bits] (ingest/summaries.py's
    _bin_tables), taken `columns` columns at a time."""
    n = values.shape[1]
    total, squares, absolute = np.zeros(n), np.zeros(n), np.zeros(n)
    low, high = np.full(n, np.inf, np.float32), np.full(n, -np.inf, np.float32)
    hist = np.zeros((n, n_bins), np.int32)
    bits = values.view(np.uint32)
    for start in range(0, n, columns):
        end = min(n, start + columns)
        s, q, a, lo, hi = total[start:end], squares[start:end], absolute[start:end], low[start:end], high[start:end]
        for i in range(n_rows):
            row = values[i, start:end]
            for j in range(end - start):  # written as selects, so that it vectorises
                v = row[j]
                d = np.float64(v)
                s[j] += d
                q[j] += d * d
                a[j] += abs(d)
                lo[j] = v if v < lo[j] else lo[j]
                hi[j] = v if v > hi[j] else hi[j]
            for j in range(start, end):  # apart: a scatter, which does not
                top = bits[i, j] >> 16
                hist[j, base[top] + (values[i, j] >= step[top])] += 1
    return total, squares, absolute, low, high, hist


@numba.njit(cache=True, nogil=True)
def beyond(
    values: np.ndarray, n_rows: int, limit: np.ndarray, top: bool, extreme: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The values of the first `n_rows` rows of (rows, N) `values` above their column's `limit` (`top`)
    or below it, looked for in the columns whose `extreme` (max or min, from figures) is: the columns that
    have any (H,), and per such column its values (H, c) float32, negated when not `top` (the best-first
    side of ingest/summaries.py's Best), padded with -inf, and their rows (H, c) int64."""
    nodes = np.nonzero(extreme > limit if top else extreme < limit)[0]
    count = np.zeros(nodes.size, np.int64)
    for i in range(n_rows):  # along the rows: the columns of a row are adjacent in memory
        for h in range(nodes.size):
            j = nodes[h]
            count[h] += (values[i, j] > limit[j]) if top else (values[i, j] < limit[j])
    found = np.full((nodes.size, count.max() if nodes.size else 0), -np.inf, np.float32)
    rows = np.zeros(found.shape, np.int64)
    count[:] = 0
    for i in range(n_rows):
        for h in range(nodes.size):
            j = nodes[h]
            v = values[i, j]
            if (v > limit[j]) if top else (v < limit[j]):
                found[h, count[h]] = v if top else -v
                rows[h, count[h]] = i
                count[h] += 1
    return nodes, found, rows


@numba.njit(cache=True, nogil=True)
def insert(
    best: np.ndarray,
    best_where: np.ndarray,
    nodes: np.ndarray,
    found: np.ndarray,
    rows: np.ndarray,
    positions: np.ndarray,
    prompt_ids: np.ndarray,
    old: np.ndarray,
    old_where: np.ndarray,
) -> None:
    """Insert each node's `found` values (H, c) into its row of (N, K) `best` (highest first) and their
    places into `best_where` (pack_where of the prompt id of positions[row]'s batch index, its token and
    token2), in place, after copying the rows it changes into `old` and `old_where` (H, K). A value
    enters only above the current K-th, after the values equal to it."""
    k = best.shape[1]
    for h in range(nodes.size):
        n = nodes[h]
        old[h], old_where[h] = best[n], best_where[n]
        for c in range(found.shape[1]):
            v = found[h, c]
            if not v > best[n, k - 1]:
                continue
            p = k - 1
            while p > 0 and best[n, p - 1] < v:
                best[n, p] = best[n, p - 1]
                best_where[n, p] = best_where[n, p - 1]
                p -= 1
            at = positions[rows[h, c]]
            best[n, p] = v
            best_where[n, p] = _pack(prompt_ids[at[0]], at[1], at[2])


_pack = numba.njit(pack_where)
