-- Edges with attention nodes (docs/DERIVED_SCALARS.md, "Edges"), beside 60_edges.sql's MLP neurons: edges out of
-- an attention node or the embedding into the MLP neurons that read them, and edges into an attention head's
-- value, query and key sides (dst attn_value, attn_query, attn_key). Same row shape, same conventions: norm
-- scales held at their stored values, a write joining the residual as gain_post * w / s_post where the model
-- norms block outputs. The query and key sides are the probability p[l,q,k,h] itself (attribution: its stored
-- gradient times the activation), read at the query and the key token: attention_read_gradients below.
--
-- The value side of attention node (l, q, k, h) is dst 'attn_value' (the reference's attn_value in-edge
-- scalars), node_index = head = h, token = q, token2 = k. As in the reference, whose value-side trace needs a
-- gradient from downstream, its value is the head's write projected on the gradient at the query:
--     down = p[l,q,k,h] (v[l,k,kv(h),:] . G[l,q,h,:]),  G = dObjective / d v_out[l,q,h,:] (stored backward)
-- which is the node's act-times-grad (p dObjective/dp). It reads the residual at the KEY token through
-- v[k] = W_V[kv(h)] . LN(r[k]) + b_V, so with the norm's scale s_attn[l,k] held
--     activation  = d down / d r[k] . w_up = sum_c p G[c] (w_up . u_c) / s_attn[l,k]
--     u_c = P(gain_pre_attn * W_V[:, c])
--     attribution = dObjective/d down . activation = activation (down is already in the objective's units)
-- for every write at the key token before layer l: the embedding, every earlier attention node (query = k,
-- source_token its key), every earlier MLP neuron, the earlier blocks' output biases and the latents of the
-- residual SAEs whose sites are before the layer (f s_std D[i], as into an MLP neuron). kv(h) = h // (H / H_kv).

-- Why edges into an attention head's value, query or key side (inward: node_dst attn_value, attn_query or
-- attn_key), or out of an attention node or the embedding, cannot be answered, or NULL when they can.
CREATE OR REPLACE MACRO attention_edge_problem(node_dst, l, h, inward) AS TABLE
SELECT CASE
    WHEN NOT EXISTS (SELECT 1 FROM weights WHERE location IN ('mlp.to_hidden', 'attn.to_value'))
        THEN 'this warehouse holds no input-side weights: ingest again with --input-weights all (no prompt is '
             || 'stored twice; the weights are added)'
    WHEN node_dst <> 'resid_post_embedding' AND (l IS NULL OR h IS NULL OR l < 0 OR l >= (SELECT max(n_layers) FROM models)
         OR h < 0 OR h >= (SELECT max(n_heads) FROM models))
        THEN 'no attention head ' || coalesce(l::VARCHAR, 'NULL') || ':' || coalesce(h::VARCHAR, 'NULL')
             || ' in this warehouse''s model'
    -- (each scan's own condition repeated inside it, so that a question it does not concern plans no scan:
    -- the refusal's subqueries all run, whichever WHEN applies)
    WHEN node_dst = 'attn_value' AND NOT EXISTS (SELECT 1 FROM facts WHERE node_dst = 'attn_value'
                                                AND dst = 'attn_weighted_sum_of_values' AND layer = l
                                                AND backward IS NOT NULL)
        THEN 'edges into an attention head''s value side need the gradient of its summed values: ingest with '
             || '--locations including attn.v_out:backward (and attn.qk_probs:forward, attn.v:forward)'
    WHEN node_dst IN ('attn_query', 'attn_key') AND (SELECT bool_or(config->>'qk_norm' IS NOT NULL) FROM models)
        THEN 'edges into the query and key sides do not model a norm of q and k (this model''s qk_norm)'
    WHEN node_dst IN ('attn_query', 'attn_key')
         AND (NOT EXISTS (SELECT 1 FROM facts WHERE node_dst IN ('attn_query', 'attn_key')
                                                AND dst = 'attn_query' AND layer = l)
              OR NOT EXISTS (SELECT 1 FROM facts WHERE node_dst IN ('attn_query', 'attn_key')
                                                   AND dst = 'attn_key' AND layer = l))
        THEN 'edges into an attention head''s query and key sides need its stored queries and keys: ingest with '
             || '--locations including attn.q:forward and attn.k:forward (and attn.qk_probs:forward,backward)'
    WHEN NOT inward AND node_dst = 'attn_qk_probs' AND l = (SELECT max(n_layers) - 1 FROM models)
         AND (SELECT bool_or(parallel_residual) FROM edge_switches())
        THEN 'attention head ' || l || ':' || h || ' is in the last layer and its MLP reads the same input: no '
             || 'MLP neuron reads its write'
    WHEN NOT inward AND (SELECT bool_or(activation NOT IN ('gelu_tanh', 'gelu', 'silu', 'relu')) FROM edge_switches())
        THEN 'edges know the activations gelu_tanh, gelu, silu and relu, not this model''s'
    WHEN NOT inward AND NOT EXISTS (SELECT 1 FROM facts WHERE NOT inward AND dst = 'mlp_pre_act' AND forward IS NOT NULL
                                    AND layer >= coalesce(l, 0))
        THEN 'edges into MLP neurons need their pre-activations: ingest with --locations including '
             || 'mlp.pre_act:forward (and mlp.post_act:forward,backward)'
    WHEN (inward AND l > 0 OR node_dst = 'attn_qk_probs')
         AND NOT EXISTS (SELECT 1 FROM facts WHERE (inward AND l > 0 OR node_dst = 'attn_qk_probs')
                                              AND dst = 'attn_value' AND forward IS NOT NULL)
        THEN 'edges with attention nodes need the values they write: ingest with --locations including attn.v:forward'
END AS problem;

-- Edges out of attention node (up_layer, q, k, h) into every MLP neuron j of a layer L that reads it (L >=
-- up_layer; L > up_layer where attention and MLP read one input) at the query token q:
--     activation = p[q,k,h] / s_post[up,q] (c1 sum_c v[k,kv(h),c] F1[L,j,c] + c2 sum_c v[...] F2[L,j,c])
-- F_r[L,j,c] = P(gain_post * W_O[up][h][c,:]) . (gain_pre_mlp[L] * W_r[L][:, j]), c1 and c2 the reader's slopes.
CREATE OR REPLACE MACRO attn_out_edges(up_layer, h) AS TABLE
WITH w AS (
    SELECT o.model_id, o.row_index AS c, o.col_index AS channel, o.value::DOUBLE * coalesce(g.value, 1) AS value,
           e.norm, e.gated_mlp, e.parallel_residual
    FROM weights o
    JOIN edge_switches() e ON e.model_id = o.model_id
    LEFT JOIN weights g
      ON g.model_id = o.model_id AND g.location = 'layer_norm_gain.post_attn' AND g.layer = o.layer AND g.row_index = o.col_index
    WHERE o.location = 'attn.to_residual' AND o.layer = up_layer AND o.head = h
),
wc AS (
    SELECT model_id, gated_mlp, parallel_residual, channel, c,
           value - CASE WHEN norm = 'layernorm' THEN avg(value) OVER (PARTITION BY model_id, c) ELSE 0 END AS value
    FROM w
),
-- the centred write rows times each reading layer's pre-MLP gain, as lists ordered by residual channel
wg AS MATERIALIZED (
    SELECT w.model_id, w.gated_mlp, l.layer, w.c, list(w.value * coalesce(g.value, 1) ORDER BY w.channel) AS value
    FROM wc w
    JOIN (SELECT DISTINCT model_id, layer FROM weights WHERE location = 'mlp.residual_bias') l
      ON l.model_id = w.model_id AND (l.layer > up_layer OR (l.layer = up_layer AND NOT w.parallel_residual))
    LEFT JOIN weights g
      ON g.model_id = w.model_id AND g.location = 'layer_norm_gain.pre_mlp' AND g.layer = l.layer AND g.row_index = w.channel
    GROUP BY w.model_id, w.gated_mlp, l.layer, w.c
),
-- dotted with every read column of the reading layers (weight_vectors)
f AS MATERIALIZED (
    SELECT r.model_id, r.layer, r.vector_index AS node_index, w.c,
           sum(CASE WHEN (r.location = 'mlp.to_gate') = w.gated_mlp THEN list_dot_product(r.vector, w.value) END) AS f1,
           coalesce(sum(CASE WHEN (r.location = 'mlp.to_gate') = w.gated_mlp THEN NULL
                             ELSE list_dot_product(r.vector, w.value) END), 0) AS f2
    FROM (SELECT model_id, location, layer, vector_index, vector::DOUBLE[] AS vector FROM weight_vectors
          WHERE location IN ('mlp.to_hidden', 'mlp.to_gate') AND layer >= up_layer) r
    JOIN wg w ON w.model_id = r.model_id AND w.layer = r.layer
    GROUP BY r.model_id, r.layer, r.vector_index, w.c
),
-- per prompt, key token and reading neuron: the stored value of head h's key/value head dotted with F
value_reads AS (
    SELECT v.prompt_id, v.token AS key_token, f.layer, f.node_index, sum(v.forward * f.f1) AS r1, sum(v.forward * f.f2) AS r2
    FROM facts v
    JOIN prompts p ON p.prompt_id = v.prompt_id
    JOIN edge_switches() e ON e.model_id = p.model_id
    JOIN f ON f.model_id = p.model_id AND f.c = v.node_index
    WHERE v.dst = 'attn_value' AND v.forward IS NOT NULL AND v.layer = up_layer AND v.head = h // (e.n_heads // e.n_kv_heads)
    GROUP BY v.prompt_id, v.token, f.layer, f.node_index
)
SELECT p.prompt_id, p.token::SMALLINT AS token, NULL::SMALLINT AS token2, 'mlp_post_act'::VARCHAR AS dst,
       c.layer::SMALLINT AS layer, NULL::SMALLINT AS head, c.node_index::INTEGER AS node_index,
       'attn_qk_probs'::VARCHAR AS source_dst, up_layer::SMALLINT AS source_layer, h::SMALLINT AS source_head,
       h::INTEGER AS source_node_index, p.token2::SMALLINT AS source_token,
       (p.forward * (c.c1 * r.r1 + c.c2 * r.r2) / coalesce(s.value, 1))::DOUBLE AS activation,
       (c.grad * p.forward * (c.c1 * r.r1 + c.c2 * r.r2) / coalesce(s.value, 1))::DOUBLE AS attribution
FROM facts p
JOIN mlp_read_slopes(up_layer, 32767, NULL) c ON c.prompt_id = p.prompt_id AND c.token = p.token
JOIN value_reads r
  ON r.prompt_id = p.prompt_id AND r.key_token = p.token2 AND r.layer = c.layer AND r.node_index = c.node_index
JOIN edge_switches() e ON e.model_id = c.model_id
LEFT JOIN post_block_scales('attn') s ON s.prompt_id = p.prompt_id AND s.layer = p.layer AND s.token = p.token
WHERE p.dst = 'attn_qk_probs' AND p.forward IS NOT NULL AND p.layer = up_layer AND p.node_index = h
  AND (s.value IS NOT NULL OR NOT e.post_block_norms);

-- Edges out of the embedding e[t] into every MLP neuron j of every layer L at token t:
--     activation = c1 (P e[t]) . (gain_pre_mlp[L] * W1[L][:, j]) + c2 (P e[t]) . (gain_pre_mlp[L] * W2[L][:, j])
CREATE OR REPLACE MACRO embedding_out_edges() AS TABLE
WITH e AS (
    SELECT x.prompt_id, p.model_id, x.token, x.node_index AS channel,
           x.forward::DOUBLE - CASE WHEN s.norm = 'layernorm' THEN avg(x.forward::DOUBLE)
               OVER (PARTITION BY x.prompt_id, x.token) ELSE 0 END AS value
    FROM facts x
    JOIN prompts p ON p.prompt_id = x.prompt_id
    JOIN edge_switches() s ON s.model_id = p.model_id
    WHERE x.dst = 'resid_post_embedding' AND x.forward IS NOT NULL
),
-- the centred embedding times each reading layer's pre-MLP gain, as lists ordered by residual channel
eg AS MATERIALIZED (
    SELECT e.prompt_id, e.model_id, e.token, l.layer, list(e.value * coalesce(g.value, 1) ORDER BY e.channel) AS value
    FROM e
    JOIN (SELECT DISTINCT model_id, layer FROM weight_vectors WHERE location = 'mlp.to_hidden') l ON l.model_id = e.model_id
    LEFT JOIN weights g
      ON g.model_id = e.model_id AND g.location = 'layer_norm_gain.pre_mlp' AND g.layer = l.layer AND g.row_index = e.channel
    GROUP BY e.prompt_id, e.model_id, e.token, l.layer
),
-- dotted with the reading columns (weight_vectors), first (the pre-activation's, the gate's where gated) or not
reads AS (
    SELECT e.prompt_id, e.token, r.layer, r.vector_index AS node_index,
           sum(CASE WHEN r.first THEN list_dot_product(r.vector, e.value) ELSE 0 END) AS r1,
           sum(CASE WHEN r.first THEN 0 ELSE list_dot_product(r.vector, e.value) END) AS r2
    FROM eg e
    JOIN (SELECT v.model_id, v.layer, v.vector_index, (v.location = 'mlp.to_gate') = s.gated_mlp AS first,
                 v.vector::DOUBLE[] AS vector
          FROM weight_vectors v JOIN edge_switches() s ON s.model_id = v.model_id
          WHERE v.location IN ('mlp.to_hidden', 'mlp.to_gate')) r
      ON r.model_id = e.model_id AND r.layer = e.layer
    GROUP BY e.prompt_id, e.token, r.layer, r.vector_index
)
SELECT r.prompt_id, r.token::SMALLINT AS token, NULL::SMALLINT AS token2, 'mlp_post_act'::VARCHAR AS dst,
       r.layer::SMALLINT AS layer, NULL::SMALLINT AS head, r.node_index::INTEGER AS node_index,
       'resid_post_embedding'::VARCHAR AS source_dst, NULL::SMALLINT AS source_layer, NULL::SMALLINT AS source_head,
       NULL::INTEGER AS source_node_index, r.token::SMALLINT AS source_token,
       (c.c1 * r.r1 + c.c2 * r.r2)::DOUBLE AS activation, (c.grad * (c.c1 * r.r1 + c.c2 * r.r2))::DOUBLE AS attribution
FROM reads r
JOIN mlp_read_slopes(0, 32767, NULL) c
  ON c.prompt_id = r.prompt_id AND c.token = r.token AND c.layer = r.layer AND c.node_index = r.node_index;

-- Per prompt, query token, key token and channel c of the read (value, query or key channel as side is 'value',
-- 'query' or 'key') of query head h of layer down_layer (NULL: every layer or head, named in the columns layer
-- and head): a = d down / d (w_up . u_c) for a write w_up at token pos (the key token, or the query
-- token for the query side), the norm's scale at pos held, and grad = dObjective / d down (NULL for the value
-- side, whose down is the head's write projected on the gradient). Query and key sides, down = p[q,k,h], with
-- l[k'] = q . k[k'] (the stored q and k carry the logit scaling's root each) capped as cap tanh(l / cap) (slope
-- c' = 1 - tanh^2, 1 uncapped), through the softmax's Jacobian over the query's row:
--     query side: d p[q,k] / d q = p[q,k] (c'[k] k[k] - sum_k' p[q,k'] c'[k'] k[k'])
--     key side:   d p[q,k] / d k[k] = p[q,k] (1 - p[q,k]) c'[k] q          (through the pair's own key only)
-- with the 1 taken as the row's stored sum: for p[q,k] near 1, 1 - p[q,k] from float32 probabilities is
-- rounding, while the row's other probabilities, summed, keep their precision.
-- then back through the rotary embedding at pos (transposed: rotate-half pairs c, c + rotary_dim/2) and the root.
CREATE OR REPLACE MACRO attention_read_gradients(side, down_layer, h) AS TABLE
WITH m AS (
    SELECT x.model_id, e.n_heads // e.n_kv_heads AS grp, (x.config->>'attn_logit_softcap')::DOUBLE AS cap,
           sqrt(coalesce((x.config->>'attn_scale')::DOUBLE, pow(x.d_head, -0.5))) AS root,
           coalesce((x.config->'rope'->>'rotary_dim')::INTEGER, 0) AS rot, x.config->'rope'->'inv_freq' AS inv_freq,
           coalesce((x.config->'rope'->>'attention_factor')::DOUBLE, 1) AS rope_factor
    FROM models x JOIN edge_switches() e ON e.model_id = x.model_id
),
probs AS MATERIALIZED (
    SELECT p.prompt_id, q.model_id, p.layer, p.node_index AS head, p.node_index // m.grp AS kv, p.token, p.token2,
           p.forward::DOUBLE AS p, p.backward::DOUBLE AS grad,
           sum(p.forward::DOUBLE) OVER (PARTITION BY p.prompt_id, p.layer, p.node_index, p.token) AS total
    FROM facts p JOIN prompts q ON q.prompt_id = p.prompt_id JOIN m ON m.model_id = q.model_id
    WHERE p.dst = 'attn_qk_probs' AND p.forward IS NOT NULL AND (down_layer IS NULL OR p.layer = down_layer)
      AND (h IS NULL OR p.node_index = h)
),
-- the stored q of head h and k of its key/value head (of every head where h is NULL)
qk AS MATERIALIZED (
    SELECT f.prompt_id, f.dst, f.layer, f.head, f.token, f.node_index AS c, f.forward::DOUBLE AS value
    FROM facts f JOIN prompts q ON q.prompt_id = f.prompt_id JOIN m ON m.model_id = q.model_id
    WHERE f.dst IN ('attn_query', 'attn_key') AND (down_layer IS NULL OR f.layer = down_layer)
      AND f.forward IS NOT NULL AND side <> 'value'
      AND (h IS NULL OR f.head = CASE f.dst WHEN 'attn_query' THEN h ELSE h // m.grp END)
),
capped AS MATERIALIZED (
    SELECT p.prompt_id, p.model_id, p.layer, p.head, p.kv, p.token, p.token2, p.p, p.grad, p.total,
           CASE WHEN any_value(m.cap) IS NULL THEN 1 ELSE 1 - pow(tanh(sum(a.value * b.value) / any_value(m.cap)), 2) END AS slope
    FROM probs p
    JOIN m ON m.model_id = p.model_id
    JOIN qk a
      ON a.prompt_id = p.prompt_id AND a.dst = 'attn_query' AND a.layer = p.layer AND a.head = p.head AND a.token = p.token
    JOIN qk b
      ON b.prompt_id = p.prompt_id AND b.dst = 'attn_key' AND b.layer = p.layer AND b.head = p.kv AND b.token = p.token2
     AND b.c = a.c
    GROUP BY p.prompt_id, p.model_id, p.layer, p.head, p.kv, p.token, p.token2, p.p, p.grad, p.total
),
mean_key AS (
    SELECT x.prompt_id, x.layer, x.head, x.token, b.c, sum(x.p * x.slope * b.value) AS value
    FROM capped x
    JOIN qk b ON b.prompt_id = x.prompt_id AND b.dst = 'attn_key' AND b.layer = x.layer AND b.head = x.kv
     AND b.token = x.token2
    GROUP BY x.prompt_id, x.layer, x.head, x.token, b.c
),
-- d down / d (the rotated, scaled q or k) per channel
rotated AS MATERIALIZED (
    SELECT x.prompt_id, x.model_id, x.token, x.token2, x.token AS pos, b.c, x.grad, x.p * (x.slope * b.value * x.total - k.value) AS g,
           x.layer, x.head
    FROM capped x
    JOIN qk b ON b.prompt_id = x.prompt_id AND b.dst = 'attn_key' AND b.layer = x.layer AND b.head = x.kv
     AND b.token = x.token2
    JOIN mean_key k ON k.prompt_id = x.prompt_id AND k.layer = x.layer AND k.head = x.head AND k.token = x.token AND k.c = b.c
    WHERE side = 'query'
    UNION ALL
    SELECT x.prompt_id, x.model_id, x.token, x.token2, x.token2, a.c, x.grad, x.p * (x.total - x.p) * x.slope * a.value,
           x.layer, x.head
    FROM capped x
    JOIN qk a ON a.prompt_id = x.prompt_id AND a.dst = 'attn_query' AND a.layer = x.layer AND a.head = x.head
     AND a.token = x.token
    WHERE side = 'key'
),
turned AS (
    SELECT r.prompt_id, r.model_id, r.token, r.token2, r.pos, r.c, r.grad,
           m.root * CASE WHEN r.c >= m.rot THEN r.g
               ELSE m.rope_factor * (r.g * cos(r.pos * (m.inv_freq->>(r.c % (m.rot // 2)))::DOUBLE)
                   + CASE WHEN r.c < m.rot // 2 THEN o.g ELSE -o.g END * sin(r.pos * (m.inv_freq->>(r.c % (m.rot // 2)))::DOUBLE))
           END AS g, r.layer, r.head
    FROM rotated r
    JOIN m ON m.model_id = r.model_id
    LEFT JOIN rotated o
      ON o.prompt_id = r.prompt_id AND o.layer = r.layer AND o.head = r.head AND o.token = r.token
     AND o.token2 = r.token2
     -- no partner (NULL) past the rotary channels: a condition on r alone would turn this into a nested loop
     AND o.c = CASE WHEN r.c < m.rot // 2 THEN r.c + m.rot // 2 WHEN r.c < m.rot THEN r.c - m.rot // 2 END
),
unscaled AS (
    SELECT prompt_id, model_id, token, token2, pos, c, grad, g, layer, head FROM turned
    UNION ALL
    -- the value side: d down / d v[k, c] = p[q,k,h] G[q,h,c]
    SELECT p.prompt_id, p.model_id, p.token, p.token2, p.token2, g.node_index, NULL, p.p * g.backward::DOUBLE, p.layer, p.head
    FROM probs p
    JOIN facts g
      ON g.prompt_id = p.prompt_id AND g.token = p.token AND g.dst = 'attn_weighted_sum_of_values' AND g.layer = p.layer
     AND g.head = p.head AND g.backward IS NOT NULL
    WHERE side = 'value'
)
SELECT x.prompt_id, x.model_id, x.token, x.token2, x.pos, x.c, x.grad, x.g / coalesce(s.forward::DOUBLE, 1) AS a,
       x.layer, x.head
FROM unscaled x
LEFT JOIN facts s
  ON s.prompt_id = x.prompt_id AND s.token = x.pos AND s.dst = 'attn_input_layer_norm_scale' AND s.layer = x.layer;

-- Edges into the value, query or key side (side 'value', 'query', 'key') of query head h of layer down_layer, one
-- row per prompt, query token, key token and upstream node at the token the side reads (the key token; the
-- query token for the query side): activation = sum_c a[c] (w_up . u_c) with a from attention_read_gradients,
-- attribution = dObjective/dp times it (the value side: equal to it).
CREATE OR REPLACE MACRO attention_in_edges(side, down_layer, h) AS TABLE
-- u_c = P(gain_pre_attn * W[:, c]) per model, residual channel and channel c of the side's projection (W_V or
-- W_K of key/value head kv(h), W_Q of head h)
WITH u AS MATERIALIZED (
    SELECT w.model_id, w.row_index AS channel, w.col_index AS c,
           w.value::DOUBLE * coalesce(g.value, 1) - CASE WHEN e.norm = 'layernorm'
               THEN avg(w.value::DOUBLE * coalesce(g.value, 1)) OVER (PARTITION BY w.model_id, w.col_index) ELSE 0 END AS u
    FROM weights w
    JOIN edge_switches() e ON e.model_id = w.model_id
    LEFT JOIN weights g
      ON g.model_id = w.model_id AND g.location = 'layer_norm_gain.pre_attn' AND g.layer = down_layer AND g.row_index = w.row_index
    WHERE w.location = 'attn.to_' || side AND w.layer = down_layer
      AND w.head = CASE WHEN side = 'query' THEN h ELSE h // (e.n_heads // e.n_kv_heads) END
),
-- the reads as the earlier blocks' writes reach them (times the gain of the norm after the block, if any)
reads AS MATERIALIZED (
    SELECT u.model_id, b.block, b.layer, u.channel, u.c, u.u * coalesce(g.value, 1) AS u
    FROM u
    JOIN (SELECT DISTINCT model_id, split_part(location, '.', 1) AS block, layer FROM weights
          WHERE location IN ('attn.residual_bias', 'mlp.residual_bias') AND layer < down_layer) b ON b.model_id = u.model_id
    LEFT JOIN weights g
      ON g.model_id = u.model_id AND g.location = 'layer_norm_gain.post_' || b.block AND g.layer = b.layer
     AND g.row_index = u.channel
),
-- the reads as lists ordered by residual channel, per written matrix, layer and read channel c
directions AS MATERIALIZED (
    SELECT model_id, block || '.to_residual' AS location, layer, c, list(u ORDER BY channel) AS u
    FROM reads GROUP BY model_id, block, layer, c
),
-- weight-only factors per value channel c: an MLP neuron's W_out row, a head's W_O row per its value channel
-- c2 (weight_vectors), a block's output bias, each dotted with u_c
f AS MATERIALIZED (
    SELECT v.model_id, split_part(v.location, '.', 1) AS kind, v.layer, v.head, v.vector_index AS node_index, d.c,
           list_dot_product(v.vector, d.u) AS f
    FROM (SELECT model_id, location, layer, head, vector_index, vector::DOUBLE[] AS vector FROM weight_vectors
          WHERE location IN ('mlp.to_residual', 'attn.to_residual') AND layer < down_layer) v
    JOIN directions d ON d.model_id = v.model_id AND d.location = v.location AND d.layer = v.layer
    UNION ALL
    SELECT w.model_id, r.block || '_bias', w.layer, NULL, NULL, r.c, sum(w.value * r.u)
    FROM weights w JOIN reads r ON r.model_id = w.model_id AND r.layer = w.layer AND r.channel = w.row_index
     AND w.location = r.block || '.residual_bias'
    WHERE w.location IN ('attn.residual_bias', 'mlp.residual_bias') AND w.layer < down_layer
    GROUP BY w.model_id, r.block, w.layer, r.c
),
-- the latents of the residual SAEs whose sites are before the layer's attention: each decoder row dotted with u_c
latent_f AS MATERIALIZED (
    SELECT w.model_id, w.layer, w.vector_index AS node_index, u.c, list_dot_product(w.vector::DOUBLE[], u.u) AS f
    FROM weight_vectors w
    JOIN autoencoder_sites() s
      ON s.model_id = w.model_id AND s.layer IS NOT DISTINCT FROM w.layer AND s.latent_dst = 'online_autoencoder_latent'
     AND s.last_attn < down_layer
    JOIN (SELECT model_id, c, list(u ORDER BY channel) AS u FROM u GROUP BY model_id, c) u ON u.model_id = w.model_id
    WHERE w.location = 'autoencoder.to_residual'
),
alpha AS MATERIALIZED (SELECT * FROM attention_read_gradients(side, down_layer, h)),
-- per prompt, upstream node and read channel c: (its write at its token) . u_c
up AS (
    SELECT e.prompt_id, e.token, 'resid_post_embedding' AS source_dst, NULL::SMALLINT AS source_layer,
           NULL::SMALLINT AS source_head, NULL::INTEGER AS source_node_index, e.token AS source_token, u.c,
           sum(e.forward * u.u) AS r
    FROM facts e
    JOIN prompts p ON p.prompt_id = e.prompt_id
    JOIN u ON u.model_id = p.model_id AND u.channel = e.node_index
    WHERE e.dst = 'resid_post_embedding' AND e.forward IS NOT NULL
    GROUP BY e.prompt_id, e.token, u.c
    UNION ALL
    SELECT a.prompt_id, a.token, 'mlp_post_act', a.layer, NULL, a.node_index, a.token, f.c,
           a.forward * f.f / coalesce(s.value, 1)
    FROM facts a
    JOIN prompts p ON p.prompt_id = a.prompt_id
    JOIN f ON f.model_id = p.model_id AND f.kind = 'mlp' AND f.layer = a.layer AND f.node_index = a.node_index
    JOIN edge_switches() e ON e.model_id = p.model_id
    LEFT JOIN post_block_scales('mlp') s ON s.prompt_id = a.prompt_id AND s.layer = a.layer AND s.token = a.token
    WHERE a.dst = 'mlp_post_act' AND a.forward IS NOT NULL AND a.layer < down_layer
      AND (s.value IS NOT NULL OR NOT e.post_block_norms)
    UNION ALL
    SELECT x.prompt_id, x.token, 'attn_qk_probs', x.layer, x.node_index, x.node_index, x.token2, vr.c,
           x.forward * vr.r / coalesce(s.value, 1)
    FROM facts x
    JOIN (
        -- per (prompt, layer, key token, query head, c): the stored value of its key/value head dotted with F
        SELECT v.prompt_id, v.layer, v.token AS key_token, f.head, f.c, sum(v.forward * f.f) AS r
        FROM facts v
        JOIN prompts p ON p.prompt_id = v.prompt_id
        JOIN edge_switches() e ON e.model_id = p.model_id
        JOIN f ON f.model_id = p.model_id AND f.kind = 'attn' AND f.layer = v.layer
         AND f.head // (e.n_heads // e.n_kv_heads) = v.head AND f.node_index = v.node_index
        WHERE v.dst = 'attn_value' AND v.forward IS NOT NULL AND v.layer < down_layer
        GROUP BY v.prompt_id, v.layer, v.token, f.head, f.c
    ) vr ON vr.prompt_id = x.prompt_id AND vr.layer = x.layer AND vr.key_token = x.token2 AND vr.head = x.node_index
    JOIN prompts p ON p.prompt_id = x.prompt_id
    JOIN edge_switches() e ON e.model_id = p.model_id
    LEFT JOIN post_block_scales('attn') s ON s.prompt_id = x.prompt_id AND s.layer = x.layer AND s.token = x.token
    WHERE x.dst = 'attn_qk_probs' AND x.forward IS NOT NULL AND x.layer < down_layer
      AND (s.value IS NOT NULL OR NOT e.post_block_norms)
    UNION ALL
    SELECT t.prompt_id, t.token, CASE f.kind WHEN 'attn_bias' THEN 'attn_residual_bias' ELSE 'mlp_residual_bias' END,
           f.layer, NULL, NULL, t.token, f.c, f.f / coalesce(s.forward, 1)
    FROM tokens t
    JOIN prompts p ON p.prompt_id = t.prompt_id
    JOIN f ON f.model_id = p.model_id AND f.kind IN ('attn_bias', 'mlp_bias')
    JOIN edge_switches() e ON e.model_id = p.model_id
    LEFT JOIN facts s
      ON s.prompt_id = t.prompt_id AND s.token = t.token AND s.layer = f.layer
     AND s.dst IN ('attn_output_layer_norm_scale', 'mlp_output_layer_norm_scale')
     AND s.dst = CASE f.kind WHEN 'attn_bias' THEN 'attn' ELSE 'mlp' END || '_output_layer_norm_scale'
    WHERE s.forward IS NOT NULL OR NOT e.post_block_norms
    UNION ALL
    -- a latent writes f s D[i] (s the input's std of a layer-normalising SAE)
    SELECT l.prompt_id, l.token, 'online_autoencoder_latent', l.layer, NULL, l.node_index, l.token, f.c,
           l.forward::DOUBLE * coalesce(s.forward, 1) * f.f
    FROM facts l
    JOIN prompts p ON p.prompt_id = l.prompt_id
    JOIN latent_f f ON f.model_id = p.model_id AND f.layer IS NOT DISTINCT FROM l.layer AND f.node_index = l.node_index
    LEFT JOIN facts s
      ON s.prompt_id = l.prompt_id AND s.token = l.token AND s.dst = 'online_autoencoder_input_std'
     AND s.layer IS NOT DISTINCT FROM l.layer
    WHERE l.dst = 'online_autoencoder_latent' AND l.forward IS NOT NULL
)
SELECT a.prompt_id, a.token::SMALLINT AS token, a.token2::SMALLINT AS token2, ('attn_' || side)::VARCHAR AS dst,
       down_layer::SMALLINT AS layer, h::SMALLINT AS head, h::INTEGER AS node_index, x.source_dst::VARCHAR AS source_dst,
       x.source_layer::SMALLINT AS source_layer, x.source_head::SMALLINT AS source_head,
       x.source_node_index::INTEGER AS source_node_index, x.source_token::SMALLINT AS source_token,
       sum(a.a * x.r)::DOUBLE AS activation,
       (CASE WHEN side = 'value' THEN 1 ELSE any_value(a.grad) END * sum(a.a * x.r))::DOUBLE AS attribution
FROM alpha a
JOIN up x ON x.prompt_id = a.prompt_id AND x.token = a.pos AND x.c = a.c
GROUP BY a.prompt_id, a.token, a.token2, x.source_dst, x.source_layer, x.source_head, x.source_node_index, x.source_token;
