-- Row shapes shared by several derived views.

-- Whether the forward and backward rows of a location pair up one to one in stored order: true when no
-- prompt holds one pass of it without the other (its run stored both passes and ran a backward pass, or
-- neither). The writer appends a batch's rows location by location, each in (layer, prompt, token,
-- node) order, the same order for both passes, so then the n-th forward row and the n-th backward row
-- of the location are the same element.
CREATE OR REPLACE MACRO passes_aligned(location) AS
NOT EXISTS (
    SELECT 1 FROM prompts p JOIN runs r USING (run_id)
    WHERE list_contains(r.locations, location || ':forward')
       <> (list_contains(r.locations, location || ':backward') AND p.objective IS NOT NULL)
);

-- x * dObjective/dx for every stored element of a location (source: its dst; location: its name) with
-- both passes stored. When the passes align (passes_aligned) the two passes are read side by side with
-- a POSITIONAL JOIN, a streaming scan: a hash join on the element key holds every backward row in a
-- hash table (600 M rows for mlp.post_act over 1000 SmolLM2 prompts) and ran 3-5x slower on 16 prompts,
-- worse as it outgrows memory. Each paired row's key is checked, so a misalignment fails loudly rather
-- than pairing wrong rows. A file where some prompt holds one pass only takes the key join instead.
CREATE OR REPLACE MACRO act_times_grad(source, location, out_dst) AS TABLE
SELECT f.prompt_id, f.token, f.token2, f.layer, f.head, f.node_type, f.node_index, out_dst::dst_name AS dst,
       f.pass_type,
       CASE WHEN f.prompt_id = b.prompt_id AND f.token = b.token AND f.node_index = b.node_index
                 AND f.layer IS NOT DISTINCT FROM b.layer AND f.token2 IS NOT DISTINCT FROM b.token2
                 AND f.head IS NOT DISTINCT FROM b.head
            THEN (f.value * b.value)::FLOAT
            ELSE error('act_times_grad: forward and backward rows of ' || location || ' are not in the same '
                       || 'order (prompt ' || f.prompt_id || '); report this with the ingest commands used')
       END AS value
FROM (SELECT * FROM activations WHERE dst = source AND pass_type = 'forward') f
POSITIONAL JOIN (SELECT * FROM activations WHERE dst = source AND pass_type = 'backward') b
WHERE passes_aligned(location)
UNION ALL
SELECT f.prompt_id, f.token, f.token2, f.layer, f.head, f.node_type, f.node_index, out_dst::dst_name AS dst,
       f.pass_type, (f.value * b.value)::FLOAT AS value
FROM (SELECT * FROM activations WHERE dst = source AND pass_type = 'forward' AND NOT passes_aligned(location)) f
JOIN (SELECT * FROM activations WHERE dst = source AND pass_type = 'backward' AND NOT passes_aligned(location)) b
  ON b.prompt_id = f.prompt_id AND b.token = f.token AND coalesce(b.token2, -1) = coalesce(f.token2, -1)
 AND coalesce(b.layer, -1) = coalesce(f.layer, -1) AND coalesce(b.head, -1) = coalesce(f.head, -1)
 AND b.node_index = f.node_index;

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
