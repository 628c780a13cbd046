-- Row shapes shared by several derived views.

-- x * dObjective/dx for every stored element of a location with both passes stored: one fact row holds
-- both passes of an element, so this is a scan with a product, no pairing of rows.
CREATE OR REPLACE MACRO act_times_grad(source, out_dst) AS TABLE
SELECT prompt_id, token, token2, layer, head, node_type, node_index, out_dst::VARCHAR AS dst,
       'forward' AS pass_type, (forward * backward)::FLOAT AS value
FROM facts
WHERE dst = source AND forward IS NOT NULL AND backward IS NOT NULL;

-- ||x[l,t,:]|| for a stored residual-stream vector; one row per token and layer.
CREATE OR REPLACE MACRO residual_norm(source, out_dst) AS TABLE
SELECT prompt_id, token, NULL::SMALLINT AS token2, layer, NULL::SMALLINT AS head, 'layer'::VARCHAR AS node_type,
       0 AS node_index, out_dst::VARCHAR AS dst, pass_type, sqrt(sum(value::DOUBLE * value))::FLOAT AS value
FROM activations
WHERE dst = source AND pass_type = 'forward'
GROUP BY prompt_id, token, layer, pass_type, out_dst;

-- An attention-node view summed over attended-to tokens: one row per (query token, head).
CREATE OR REPLACE MACRO per_sequence_token(source_view, out_dst) AS TABLE
SELECT prompt_id, token, NULL::SMALLINT AS token2, layer, head, node_type, node_index, out_dst::VARCHAR AS dst,
       pass_type, sum(value)::FLOAT AS value
FROM query_table(source_view)
GROUP BY prompt_id, token, layer, head, node_type, node_index, pass_type, out_dst;

-- An attention-node view with (query q, key k) flattened to one token-pair index q(q+1)/2 + k.
CREATE OR REPLACE MACRO flattened_pairs(source_view, out_dst) AS TABLE
SELECT prompt_id, (token::INTEGER * (token + 1) // 2 + token2)::INTEGER AS token, NULL::SMALLINT AS token2, layer, head,
       node_type, node_index, out_dst::VARCHAR AS dst, pass_type, value
FROM query_table(source_view);
