"""Per-node summaries: their fixed definitions and the merge that keeps them few.

Every batch an ingest commits adds, in the same transaction, one summary row per (dst, pass, layer,
head, node, first_token) of the rows it stores (count, sums, min, max, non-zeros, a histogram over fixed
edges) and the rows that may be among the node's top or bottom K examples (`node_examples`). Summaries
add: the answer for a node is the merge of its rows, so writes stay appends. To keep a node's rows few
whatever the dataset's size (and the queries that read them flat), the writer merges a run's segments as
an LSM tree does: every FAN_IN segments of one level become one segment of the next level, in the
transaction of the batch that completes them, and a finished run is merged into one segment. A merge
deletes whole files (DuckLake drops them from the snapshot), so readers never read superseded rows.

`first_token` splits each node's rows into those at position 0 and the rest, so that answers with and
without the first token (the attention-sink token: its activations dwarf the others' in most models)
both come from summaries. Columns a dst has not (layer, head, token2) hold -1, never NULL: DuckLake
1.5.5's statistics lose values of columns that are NULL in some files (see warehouse/writer.py).
"""

from __future__ import annotations

import duckdb

from warehouse import registry

# At least K highest and K lowest examples of every node are kept per first_token group.
EXAMPLES_K = 20
# Histogram edges: powers of ten from 1e-5 to 1e5 on each side of zero. Bin i holds values v with
# EDGES[i-1] <= v < EDGES[i] (EDGES[-1] = -inf, EDGES[len] = +inf): 24 bins, fixed for every dst so that
# histograms add. Zeros fall in the bin [0, 1e-5); n - n_nonzero counts them exactly.
_MAGNITUDES = [10.0**e for e in range(-5, 6)]
EDGES: tuple[float, ...] = (*(-m for m in reversed(_MAGNITUDES)), 0.0, *_MAGNITUDES)
N_BINS = len(EDGES) + 1
# Segments of one level merged into one of the next; the level a finished run's summaries end in.
FAN_IN = 16
FINAL_LEVEL = 99

# Raw locations whose forward x backward product is a Tier-1 derived dst (the `act_times_grad` macro):
# their summaries are computed at capture too, from the same stored values the view multiplies.
ACT_TIMES_GRAD = {"mlp.post_act": "mlp_act_times_grad", "attn.qk_probs": "unflattened_attn_act_times_grad"}
# logits are stored for a few vocabulary ids per prompt only: a summary of them would describe that choice.
NOT_SUMMARISED = frozenset({"logits"})


def summarised_location(loc: registry.ActivationLocation) -> bool:
    """Whether an ingest summarises a raw location: not logits, and not what a spliced SAE writes (latents
    are stored only where non-zero; the SAEs' own views and a scan answer for them)."""
    return loc.name not in NOT_SUMMARISED and not loc.sparse and not loc.from_sae


def summarised(dst: str) -> bool:
    """Whether an ingest keeps summaries of `dst` (a raw dst's name, or a derived view's)."""
    loc = registry.LOCATION_BY_DST.get(dst)
    return summarised_location(loc) if loc is not None else dst in ACT_TIMES_GRAD.values()


NODE_KEY = ("dst", "pass_type", "layer", "head", "node_type", "node_index", "first_token")
SUMMARY_COLUMNS = ("n", "sum", "sum_sq", "sum_abs", "min", "max", "n_nonzero", "hist")
EXAMPLE_COLUMNS = ("side", "prompt_id", "token", "token2", "value")
TABLES = ("node_summaries", "node_examples")


def merged_summary_sql(source: str) -> str:
    """A SELECT merging the summary rows of `source` (a relation with NODE_KEY and SUMMARY_COLUMNS) into
    one row per node key: counts and sums add, min and max combine, histograms add bin by bin."""
    key = ", ".join(NODE_KEY)
    hist = ", ".join(f"sum(hist[{i}])::INTEGER" for i in range(1, N_BINS + 1))
    return (
        f"SELECT {key}, sum(n)::BIGINT AS n, sum(sum) AS sum, sum(sum_sq) AS sum_sq, sum(sum_abs) AS sum_abs,"
        f" min(min) AS min, max(max) AS max, sum(n_nonzero)::BIGINT AS n_nonzero, list_value({hist}) AS hist"
        f" FROM {source} GROUP BY {key}"
    )


def kept_examples_sql(source: str, k: int = EXAMPLES_K) -> str:
    """A SELECT of the K highest ('top') and K lowest ('bottom') example rows per node key of `source`."""
    key = ", ".join(NODE_KEY)
    return (
        f"SELECT {key}, side, prompt_id, token, token2, value FROM {source}"
        f" QUALIFY row_number() OVER (PARTITION BY {key}, side ORDER BY"
        " CASE WHEN side = 'top' THEN value ELSE -value END DESC, prompt_id, token, token2) <= "
        f"{int(k)}"
    )


def merge_level(con: duckdb.DuckDBPyConnection, run_id: int, level: int | None, into_level: int, segment: int) -> None:
    """Replace the run's segments at `level` (every level when None) by one segment at `into_level`,
    inside the caller's transaction."""
    scope = f"run_id = {int(run_id)}" + ("" if level is None else f" AND level = {int(level)}")
    head = f"SELECT {int(run_id)} AS run_id, {int(segment)} AS segment, {int(into_level)} AS level"
    summaries = merged_summary_sql(f"(SELECT * FROM node_summaries WHERE {scope})")
    con.execute(f"CREATE TEMP TABLE merged_summaries AS {head}, * FROM ({summaries})")
    examples = kept_examples_sql(f"(SELECT * FROM node_examples WHERE {scope})")
    con.execute(f"CREATE TEMP TABLE merged_examples AS {head}, * FROM ({examples})")
    try:
        for table, merged in (("node_summaries", "merged_summaries"), ("node_examples", "merged_examples")):
            con.execute(f"DELETE FROM {table} WHERE {scope}")
            con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM temp.main.{merged}")
    finally:
        con.execute("DROP TABLE temp.main.merged_summaries")
        con.execute("DROP TABLE temp.main.merged_examples")


class SegmentCounter:
    """How many segments each level of each run holds, as this writer committed them: the batch whose
    segment makes FAN_IN at a level merges that level (and, in turn, the levels above)."""

    def __init__(self) -> None:
        self._counts: dict[int, dict[int, int]] = {}

    def added(self, con: duckdb.DuckDBPyConnection, run_id: int, segment: int) -> None:
        """Record one new level-0 segment of the run, merging full levels inside the caller's transaction."""
        counts = self._counts.setdefault(run_id, {})
        counts[0] = counts.get(0, 0) + 1
        level = 0
        while counts.get(level, 0) >= FAN_IN:
            merge_level(con, run_id, level, level + 1, segment)
            counts[level] = 0
            counts[level + 1] = counts.get(level + 1, 0) + 1
            level += 1

    def finished(self, con: duckdb.DuckDBPyConnection, run_id: int) -> None:
        """Merge every segment of the run into one (a no-op for a run without summaries)."""
        counts = self._counts.pop(run_id, {})
        if sum(counts.values()):
            merge_level(con, run_id, None, FINAL_LEVEL, 0)
