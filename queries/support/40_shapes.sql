-- Row shapes shared by several derived views.

-- x * dObjective/dx for every stored element of a location with both passes stored. The two passes of one
-- (prompt, layer, token) are gathered into lists by a hash aggregate on those keys, then multiplied
-- element by element and unnested: the hash table holds one entry per token and layer instead of one per
-- element, which makes the whole-warehouse top 20 about 4x faster than grouping on the element key
-- (100 SmolLM2 prompts: 7.2 s against 29 s; one prompt 0.12 s against 0.14 s), and a filter on prompt,
-- layer or token still reaches the scan. An element within a token is one UBIGINT: token2 + 1, head + 1
-- and node_index in 16, 16 and 32 bits (the columns are SMALLINT, SMALLINT and a non-negative INTEGER),
-- so the packing is exact. A list's order follows the scan, and where a token's rows straddle the
-- chunks of parallel threads the passes can come out in different orders (0.3% of tokens): those are
-- paired by sorting both on the element key. The ingest stores both passes of a location whole, so a
-- token's two passes hold the same elements; a token where they would not is left out.
CREATE OR REPLACE MACRO act_times_grad(source, out_dst) AS TABLE
WITH passes AS (
    SELECT prompt_id, layer, token, node_type,
           list(value) FILTER (pass_type = 'forward') AS x,
           list(element) FILTER (pass_type = 'forward') AS x_key,
           list(value) FILTER (pass_type = 'backward') AS dx,
           list(element) FILTER (pass_type = 'backward') AS dx_key
    FROM (SELECT *, (coalesce(token2 + 1, 0)::UBIGINT << 48) | (coalesce(head + 1, 0)::UBIGINT << 32)
                    | node_index::UBIGINT AS element
          FROM activations WHERE dst = source)
    GROUP BY prompt_id, layer, token, node_type
), paired AS (
    SELECT prompt_id, layer, token, node_type,
           CASE WHEN x_key = dx_key THEN x_key ELSE list_sort(x_key) END AS element,
           CASE WHEN x_key = dx_key THEN list_transform(x, lambda v, i: v * dx[i])
                ELSE list_transform(list_zip(list_sort(list_zip(x_key, x)), list_sort(list_zip(dx_key, dx))),
                                    lambda pair: pair[1][2] * pair[2][2]) END AS value
    FROM passes
    WHERE x_key = dx_key OR list_sort(x_key) = list_sort(dx_key)
), elements AS (
    SELECT prompt_id, layer, token, node_type, unnest(element) AS element, unnest(value) AS value FROM paired
)
SELECT prompt_id, token, (nullif(element >> 48, 0) - 1)::SMALLINT AS token2, layer,
       (nullif((element >> 32) & 65535, 0) - 1)::SMALLINT AS head, node_type,
       (element & 4294967295)::INTEGER AS node_index, out_dst::dst_name AS dst,
       'forward'::pass_type_name AS pass_type, value::FLOAT AS value
FROM elements;

-- ||x[l,t,:]|| for a stored residual-stream vector; one row per token and layer.
CREATE OR REPLACE MACRO residual_norm(source, out_dst) AS TABLE
SELECT prompt_id, token, NULL::SMALLINT AS token2, layer, NULL::SMALLINT AS head, 'layer'::node_type_name AS node_type,
       0 AS node_index, out_dst::dst_name AS dst, pass_type, sqrt(sum(value::DOUBLE * value))::FLOAT AS value
FROM activations
WHERE dst = source AND pass_type = 'forward'
GROUP BY prompt_id, token, layer, pass_type, out_dst;

-- An attention-node view summed over attended-to tokens: one row per (query token, head).
CREATE OR REPLACE MACRO per_sequence_token(source_view, out_dst) AS TABLE
SELECT prompt_id, token, NULL::SMALLINT AS token2, layer, head, node_type, node_index, out_dst::dst_name AS dst,
       pass_type, sum(value)::FLOAT AS value
FROM query_table(source_view)
GROUP BY prompt_id, token, layer, head, node_type, node_index, pass_type, out_dst;

-- An attention-node view with (query q, key k) flattened to one token-pair index q(q+1)/2 + k.
CREATE OR REPLACE MACRO flattened_pairs(source_view, out_dst) AS TABLE
SELECT prompt_id, (token::INTEGER * (token + 1) // 2 + token2)::INTEGER AS token, NULL::SMALLINT AS token2, layer, head,
       node_type, node_index, out_dst::dst_name AS dst, pass_type, value
FROM query_table(source_view);
