"""Per-node summaries: their fixed definitions, and what the writer stores of them.

An ingest keeps, for every node of every summarised dst, the run's count, sums, min, max, non-zeros, a
histogram over fixed edges, and its EXAMPLES_K highest and lowest values with their positions, as running
figures in memory (ingest/summaries.py), updated as each batch commits. Every FLUSH_SECONDS (and at least
FLUSH_TOKENS stored tokens), and when the run ends, the batch's transaction replaces the run's rows in
`node_summaries` by the running figures, appends the examples that entered the running top or bottom K since
the last flush to `node_examples`, and sets the run's `summarised_through` to its largest stored prompt id. So
the summaries cost one row per node per flush, not per batch, and a run holds one summary row per node and
group, with the values of its K-th highest and lowest examples. As a run ends, its figures go straight into
the rows of the finished runs of the same model and capture settings where there are such (warehouse/
summary_merge.py, at the cost of the run's rows), so many runs hold what one run would.

They are exact for the prompts they cover (prompt ids up to `summarised_through`); the queries add a scan
of the prompts they do not cover yet (the run being written, or the last few batches of a run whose
process was killed) and say so (queries/summaries.py).

`first_token` splits each node's figures into position 0 and the rest, so that answers with and without
the first token (the attention-sink token: its activations dwarf the others' in most models) both come
from summaries. Columns a dst has not (layer, head, token2) hold -1, never NULL: DuckLake 1.5.5's
statistics lose values of columns that are NULL in some files (see warehouse/writer.py).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import pyarrow as pa

from warehouse import registry

# At least K highest and K lowest examples of every node are kept per first_token group.
EXAMPLES_K = 20
# Histogram edges: powers of ten from 1e-5 to 1e5 on each side of zero. Bin i holds values v with
# EDGES[i-1] <= v < EDGES[i] (EDGES[-1] = -inf, EDGES[len] = +inf): 24 bins, fixed for every dst so that
# histograms add. Zeros fall in the bin [0, 1e-5); n - n_nonzero counts them exactly.
_MAGNITUDES = [10.0**e for e in range(-5, 6)]
EDGES: tuple[float, ...] = (*(-m for m in reversed(_MAGNITUDES)), 0.0, *_MAGNITUDES)
N_BINS = len(EDGES) + 1
# A run's running summaries are flushed at the first commit with FLUSH_TOKENS stored tokens and
# FLUSH_SECONDS since the last flush. A flush writes one row per node (about 330,000 for SmolLM2's default
# capture) and, the first time, every node's K best and worst examples (13 million rows): a few seconds of
# the writer, so flushes are bounded in time, not only in tokens, or a fast device would flush several times
# a second (4096 tokens took a minute on 2 CPU cores, a fifth of a second on a GPU). What a kill loses is at
# most FLUSH_SECONDS of summarised prompts: the next ingest stores them again.
FLUSH_TOKENS = 4096
FLUSH_SECONDS = 300.0

# Raw locations whose forward x backward product is a Tier-1 derived dst (the `act_times_grad` macro):
# their summaries are computed at capture too, from the same stored values the view multiplies.
ACT_TIMES_GRAD = {"mlp.post_act": "mlp_act_times_grad", "attn.qk_probs": "unflattened_attn_act_times_grad"}
# logits are stored for a few vocabulary ids per prompt only: a summary of them would describe that choice.
NOT_SUMMARISED = frozenset({"logits"})

TABLES = ("node_summaries", "node_examples")


def summarised_location(loc: registry.ActivationLocation) -> bool:
    """Whether an ingest summarises a raw location: every one but logits. A sparse one's (SAE latents)
    summaries are of its stored rows, where the forward value is non-zero."""
    return loc.name not in NOT_SUMMARISED


def written_by_sae(dst: str) -> bool:
    """Whether `dst` is written by a spliced SAE (its latents, errors, input statistics): warehouses of
    schema version 4 have summaries of every other raw dst but not of these."""
    loc = registry.LOCATION_BY_DST.get(dst)
    return loc is not None and loc.from_sae


def summarised(dst: str) -> bool:
    """Whether an ingest keeps summaries of `dst` (a raw dst's name, or a derived view's)."""
    loc = registry.LOCATION_BY_DST.get(dst)
    return summarised_location(loc) if loc is not None else dst in ACT_TIMES_GRAD.values()


class SummaryFlush(Protocol):
    """What an ingest hands the writer with a batch (or with the end of its run): the writer calls `rows`
    inside the commit and `committed` once the commit has succeeded, so a commit that is rolled back (and
    run again after a conflict) counts nothing twice."""

    def rows(self, prompt_ids: np.ndarray) -> tuple[pa.Table, pa.Table] | None:
        """(the run's summary rows, its new example rows), without run_id, when a flush is due with this
        commit; else None. `prompt_ids`: the ids the commit gave the batch's prompts, in batch order."""
        ...

    def committed(self) -> None:
        """The commit that called `rows` succeeded: the running figures include the batch from now on."""
        ...
