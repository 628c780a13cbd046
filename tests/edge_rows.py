"""One comparison for the edge checks: two {row key: (activation, attribution)} maps, the same keys, every value
within `rel` of the largest magnitude of its column in `want` (at least `floor`, so that a column that is all
rounding, such as a saturated softmax's edges, is compared at rel * floor rather than against zero)."""

from __future__ import annotations


def assert_edges_close(got: dict, want: dict, label: object, rel: float, floor: float = 0.0) -> None:
    assert set(got) == set(want), (label, (set(got) ^ set(want)).pop())
    for column in (0, 1):
        scale = max(max((abs(v[column]) for v in want.values()), default=0.0), floor)
        worst = max((abs(got[k][column] - want[k][column]) for k in want), default=0.0)
        assert worst <= rel * scale, (label, column, worst, scale)
