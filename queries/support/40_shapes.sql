-- Row shapes shared by several derived views.

-- x * dObjective/dx for every stored element of a location with both passes stored.
CREATE OR REPLACE MACRO act_times_grad(source, out_dst) AS TABLE
SELECT f.prompt_id, f.token, f.token2, f.layer, f.head, f.node_type, f.node_index, out_dst::dst_name AS dst,
       f.pass_type, (f.value * b.value)::FLOAT AS value
FROM activations f
JOIN activations b
  ON b.prompt_id = f.prompt_id AND b.token = f.token AND coalesce(b.token2, -1) = coalesce(f.token2, -1)
 AND coalesce(b.layer, -1) = coalesce(f.layer, -1) AND coalesce(b.head, -1) = coalesce(f.head, -1)
 AND b.node_index = f.node_index
WHERE f.dst = source AND f.pass_type = 'forward' AND b.dst = source AND b.pass_type = 'backward';

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
