-- Row shapes shared by several derived views.

-- x * dObjective/dx for every stored element of a location with both passes stored. An element's two rows
-- meet in a hash aggregate on the element key rather than a join: the aggregate spills to disk when a
-- whole-warehouse query outgrows memory, and a filter on any key column (a prompt, a layer) reaches the
-- scan, so one prompt's node table stays interactive. Measured on 392 SmolLM2 prompts (961 M rows, 8 GB
-- memory limit): one prompt 0.21 s (key join 0.56 s, positional pairing 7.4 s), top 20 of all 92 s
-- (key join 168 s, positional 723 s). node_type is a grouping key, not any_value(): that aggregate state
-- cannot spill, and the query then fails for lack of memory.
CREATE OR REPLACE MACRO act_times_grad(source, out_dst) AS TABLE
SELECT prompt_id, token, token2, layer, head, node_type, node_index, out_dst::dst_name AS dst,
       'forward'::pass_type_name AS pass_type, product(value)::FLOAT AS value
FROM activations
WHERE dst = source
GROUP BY prompt_id, token, token2, layer, head, node_type, node_index, out_dst
HAVING count(*) = 2;

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
