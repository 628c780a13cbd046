-- Edges out of one upstream node into the readers 60_edges.sql's and 62_attention_edges.sql's out-edge macros
-- leave out: the value, query and key sides of every later attention head, the latents of every residual SAE
-- whose site is after the write, and, out of an SAE latent, every MLP neuron after its site. Each row is the
-- row edges_into gives for the same (downstream, upstream) pair (same formulas, same conventions), computed
-- from the upstream side without asking edges_into once per reader: the write's projection on every reader
-- column of a kind (write_factors, weights only) once, then per prompt the source's coefficients times it.
--
-- An upstream node writes sum_c x[c] D[c,:] at its token: an MLP neuron a / s_post times its W_out row (c its
-- index), an attention node (q, k, h) p v[k, kv(h), c] / s_post times W_O[h]'s row c, an SAE latent f s_std
-- times its decoder row, the embedding e[t, c] times the unit vector of channel c (its factor is the read
-- itself). A reader column W[:, col] is read through its norm: u = P(gain_pre * W[:, col]) (an SAE encoder's
-- column as stored: no gain, no centring); so F[c, col] = D[c] gain_post . u and the read is sum_c x[c] F[c, col].

-- F[c, col] for the write of (up_dst, up_layer, node) against every column of the weights read_locations
-- (mlp.to_hidden, mlp.to_gate, attn.to_value, attn.to_query, attn.to_key, autoencoder.to_latent) of layers from
-- min_layer on (an SAE on the embedding, layer NULL, counts as -1), per model, write channel c and reader column
-- (location, layer, head, col). Each reader column is one vector of weight_vectors; the write side is small.
CREATE OR REPLACE MACRO write_factors(up_dst, up_layer, node, read_locations, min_layer) AS TABLE
WITH r AS MATERIALIZED (
    SELECT v.model_id, v.location, v.layer, v.head, v.vector_index AS col, v.vector::DOUBLE[] AS vector,
           CASE split_part(v.location, '.', 1) WHEN 'attn' THEN 'layer_norm_gain.pre_attn'
                                               WHEN 'mlp' THEN 'layer_norm_gain.pre_mlp' END AS gain,
           e.norm = 'layernorm' AND v.location <> 'autoencoder.to_latent' AS centred
    FROM weight_vectors v
    JOIN edge_switches() e ON e.model_id = v.model_id
    WHERE list_contains(read_locations, v.location) AND coalesce(v.layer, -1) >= min_layer
),
-- the write's rows times the gain of the norm after its block, and less their mean for a centring read (P is
-- its own transpose: centring the write is centring the read)
w AS (
    SELECT o.model_id, o.row_index AS c, o.col_index AS channel, o.value::DOUBLE * coalesce(g.value, 1) AS value
    FROM weights o
    LEFT JOIN weights g
      ON g.model_id = o.model_id AND g.layer = o.layer AND g.row_index = o.col_index
     AND g.location = CASE o.location WHEN 'mlp.to_residual' THEN 'layer_norm_gain.post_mlp'
                                      WHEN 'attn.to_residual' THEN 'layer_norm_gain.post_attn' END
    WHERE o.location = CASE up_dst WHEN 'mlp_post_act' THEN 'mlp.to_residual' WHEN 'attn_qk_probs' THEN 'attn.to_residual'
                                   WHEN 'online_autoencoder_latent' THEN 'autoencoder.to_residual' END
      AND o.layer IS NOT DISTINCT FROM up_layer AND CASE WHEN up_dst = 'attn_qk_probs' THEN o.head = node ELSE o.row_index = node END
),
wc AS (SELECT *, value - avg(value) OVER (PARTITION BY model_id, c) AS centred_value FROM w),
-- each write row c (centred where the read centres) times each reading layer's pre-norm gain, as a list ordered
-- by residual channel: its dot product with a reader column W[:, col] is F[c, col] (the gain moved onto the write)
lists AS MATERIALIZED (
    SELECT w.model_id, w.c, x.gain, x.layer, x.centred,
           list(CASE WHEN x.centred THEN w.centred_value ELSE w.value END * coalesce(g.value, 1) ORDER BY w.channel) AS value
    FROM wc w
    JOIN (SELECT DISTINCT model_id, gain, layer, centred FROM r) x ON x.model_id = w.model_id
    LEFT JOIN weights g ON g.model_id = w.model_id AND g.location = x.gain AND g.layer = x.layer AND g.row_index = w.channel
    GROUP BY w.model_id, w.c, x.gain, x.layer, x.centred
),
-- the embedding's factors are the reads themselves: each reader column's values times its gain, per channel
cells AS (
    SELECT r.model_id, r.location, r.layer, r.head, r.col, r.centred, r.gain,
           unnest(r.vector) AS value, generate_subscripts(r.vector, 1) - 1 AS channel
    FROM r WHERE up_dst = 'resid_post_embedding'
)
SELECT r.model_id, l.c, r.location, r.layer, r.head, r.col, list_dot_product(r.vector, l.value) AS f
FROM r
JOIN lists l
  ON l.model_id = r.model_id AND l.gain IS NOT DISTINCT FROM r.gain AND l.layer IS NOT DISTINCT FROM r.layer
 AND l.centred = r.centred
UNION ALL
SELECT x.model_id, x.channel, x.location, x.layer, x.head, x.col,
       x.value * coalesce(g.value, 1) - CASE WHEN x.centred
           THEN avg(x.value * coalesce(g.value, 1)) OVER (PARTITION BY x.model_id, x.location, x.layer, x.head, x.col)
           ELSE 0 END
FROM cells x
LEFT JOIN weights g ON g.model_id = x.model_id AND g.location = x.gain AND g.layer = x.layer AND g.row_index = x.channel;

-- The upstream node's coefficients x[c] per prompt and the token its write joins the residual at (an attention
-- node's query token), with its source columns.
CREATE OR REPLACE MACRO write_coefficients(up_dst, up_layer, node) AS TABLE
SELECT a.prompt_id, p.model_id, a.token, a.layer AS source_layer, NULL::SMALLINT AS source_head,
       a.node_index AS source_node_index, a.token AS source_token, a.node_index AS c, a.forward / coalesce(s.value, 1) AS x
FROM facts a
JOIN prompts p ON p.prompt_id = a.prompt_id
JOIN edge_switches() e ON e.model_id = p.model_id
LEFT JOIN post_block_scales('mlp') s ON s.prompt_id = a.prompt_id AND s.layer = a.layer AND s.token = a.token
WHERE up_dst = 'mlp_post_act' AND a.dst = 'mlp_post_act' AND a.forward IS NOT NULL AND a.layer = up_layer
  AND a.node_index = node AND (s.value IS NOT NULL OR NOT e.post_block_norms)
UNION ALL
SELECT x.prompt_id, p.model_id, x.token, x.layer, x.node_index, x.node_index, x.token2, v.node_index,
       x.forward::DOUBLE * v.forward / coalesce(s.value, 1)
FROM facts x
JOIN prompts p ON p.prompt_id = x.prompt_id
JOIN edge_switches() e ON e.model_id = p.model_id
JOIN facts v
  ON v.prompt_id = x.prompt_id AND v.dst = 'attn_value' AND v.layer = x.layer AND v.token = x.token2
 AND v.head = x.node_index // (e.n_heads // e.n_kv_heads) AND v.forward IS NOT NULL
LEFT JOIN post_block_scales('attn') s ON s.prompt_id = x.prompt_id AND s.layer = x.layer AND s.token = x.token
WHERE up_dst = 'attn_qk_probs' AND x.dst = 'attn_qk_probs' AND x.forward IS NOT NULL AND x.layer = up_layer
  AND x.node_index = node AND (s.value IS NOT NULL OR NOT e.post_block_norms)
UNION ALL
SELECT l.prompt_id, p.model_id, l.token, l.layer, NULL, l.node_index, l.token, l.node_index,
       l.forward::DOUBLE * coalesce(s.forward, 1)
FROM facts l
JOIN prompts p ON p.prompt_id = l.prompt_id
LEFT JOIN facts s
  ON s.prompt_id = l.prompt_id AND s.token = l.token AND s.dst = 'online_autoencoder_input_std'
 AND s.layer IS NOT DISTINCT FROM l.layer
WHERE up_dst = 'online_autoencoder_latent' AND l.dst = up_dst AND l.forward IS NOT NULL
  AND l.layer IS NOT DISTINCT FROM up_layer AND l.node_index = node
UNION ALL
SELECT e.prompt_id, p.model_id, e.token, NULL, NULL, NULL, e.token, e.node_index, e.forward
FROM facts e JOIN prompts p ON p.prompt_id = e.prompt_id
WHERE up_dst = 'resid_post_embedding' AND e.dst = 'resid_post_embedding' AND e.forward IS NOT NULL;

-- Where the write of (up_dst, up_layer) joins the residual, per model: the first layer whose attention reads it
-- and the first whose MLP reads it, as edges_into reaches (a block's attention reads before its own writes; an
-- attention node's own MLP reads it unless the block runs the two in parallel; an SAE latent is read from the
-- block after the last writer before its site).
CREATE OR REPLACE MACRO write_reach(up_dst, up_layer) AS TABLE
SELECT e.model_id,
       CASE up_dst WHEN 'resid_post_embedding' THEN 0 WHEN 'online_autoencoder_latent' THEN s.last_attn + 1
                   ELSE up_layer + 1 END AS first_attn,
       CASE up_dst WHEN 'resid_post_embedding' THEN 0 WHEN 'online_autoencoder_latent' THEN s.last_mlp + 1
                   WHEN 'attn_qk_probs' THEN up_layer + CASE WHEN e.parallel_residual THEN 1 ELSE 0 END
                   ELSE up_layer + 1 END AS first_mlp
FROM edge_switches() e
LEFT JOIN autoencoder_sites() s ON s.model_id = e.model_id AND s.latent_dst = up_dst AND s.layer IS NOT DISTINCT FROM up_layer;

-- Edges out of (up_dst, up_layer, node) into the value, query and key sides of every later attention head and,
-- out of an MLP neuron, an attention node or the embedding, the latents of every residual SAE after the write
-- (where they fire) or, out of an SAE latent, every MLP neuron after its site; the edge shape of 60_edges.sql.
CREATE OR REPLACE MACRO residual_out_edges(up_dst, up_layer, node) AS TABLE
WITH reach AS MATERIALIZED (SELECT * FROM write_reach(up_dst, up_layer)),
-- the SAEs whose sites read the write: every one for the embedding, else those whose last writers include it
saes_after AS MATERIALIZED (
    SELECT s.model_id, s.layer, 'autoencoder.to_latent' AS location FROM autoencoder_sites() s
    WHERE s.latent_dst = 'online_autoencoder_latent'
      AND CASE up_dst WHEN 'resid_post_embedding' THEN true WHEN 'attn_qk_probs' THEN s.last_attn >= up_layer
                      WHEN 'mlp_post_act' THEN s.last_mlp >= up_layer ELSE false END
),
f AS MATERIALIZED (
    SELECT * FROM write_factors(up_dst, up_layer, node,
        CASE WHEN up_dst = 'online_autoencoder_latent'
             THEN ['mlp.to_hidden', 'mlp.to_gate', 'attn.to_value', 'attn.to_query', 'attn.to_key']
             ELSE ['attn.to_value', 'attn.to_query', 'attn.to_key', 'autoencoder.to_latent'] END,
        CASE WHEN up_dst = 'resid_post_embedding' THEN -1 ELSE coalesce(up_layer, -1) END)
),
x AS MATERIALIZED (SELECT * FROM write_coefficients(up_dst, up_layer, node)),
-- per prompt, token, source and reader column: the write read by the column
reads AS MATERIALIZED (
    SELECT x.prompt_id, x.model_id, x.token, x.source_layer, x.source_head, x.source_node_index, x.source_token,
           f.location, f.layer, f.head, f.col, sum(x.x * f.f) AS r
    FROM x
    JOIN f ON f.model_id = x.model_id AND f.c = x.c
    JOIN reach ON reach.model_id = x.model_id
    LEFT JOIN saes_after a
      ON a.model_id = f.model_id AND a.layer IS NOT DISTINCT FROM f.layer AND a.location = f.location
    WHERE CASE WHEN f.location LIKE 'attn.%' THEN f.layer >= reach.first_attn
               WHEN f.location LIKE 'mlp.%' THEN f.layer >= reach.first_mlp ELSE a.model_id IS NOT NULL END
    GROUP BY x.prompt_id, x.model_id, x.token, x.source_layer, x.source_head, x.source_node_index, x.source_token,
             f.location, f.layer, f.head, f.col
),
alpha AS (
    SELECT 'value' AS side, * FROM attention_read_gradients('value', NULL, NULL)
    UNION ALL SELECT 'query', * FROM attention_read_gradients('query', NULL, NULL)
    UNION ALL SELECT 'key', * FROM attention_read_gradients('key', NULL, NULL)
),
rows AS (
    -- an attention head's side reads at pos (its key token; the query token for the query side)
    SELECT a.prompt_id, a.token, a.token2, 'attn_' || a.side AS dst, a.layer, a.head, a.head AS node_index,
           x.source_layer, x.source_head, x.source_node_index, x.source_token, sum(a.a * x.r) AS activation,
           CASE WHEN a.side = 'value' THEN 1 ELSE any_value(a.grad) END AS grad
    FROM alpha a
    JOIN edge_switches() e ON e.model_id = a.model_id
    JOIN reads x
      ON x.prompt_id = a.prompt_id AND x.token = a.pos AND x.location = 'attn.to_' || a.side AND x.layer = a.layer
     AND x.head = CASE WHEN a.side = 'query' THEN a.head ELSE a.head // (e.n_heads // e.n_kv_heads) END AND x.col = a.c
    GROUP BY a.prompt_id, a.token, a.token2, a.side, a.layer, a.head, x.source_layer, x.source_head,
             x.source_node_index, x.source_token
    UNION ALL
    -- a residual SAE's latent where it fires: 1 / (its input's std + 1e-5) for a layer-normalising SAE
    SELECT l.prompt_id, l.token, NULL, l.dst, l.layer, NULL, l.node_index, x.source_layer, x.source_head,
           x.source_node_index, x.source_token, x.r / coalesce(s.forward::DOUBLE + 1e-5, 1), l.backward
    FROM facts l
    JOIN reads x
      ON x.prompt_id = l.prompt_id AND x.token = l.token AND x.location = 'autoencoder.to_latent'
     AND x.layer IS NOT DISTINCT FROM l.layer AND x.col = l.node_index
    LEFT JOIN facts s
      ON s.prompt_id = l.prompt_id AND s.token = l.token AND s.dst = 'online_autoencoder_input_std'
     AND s.layer IS NOT DISTINCT FROM l.layer
    WHERE l.dst = 'online_autoencoder_latent' AND l.forward > 0
    UNION ALL
    -- an MLP neuron (out of an SAE latent), through its slopes on its two reads
    SELECT c.prompt_id, c.token, NULL, 'mlp_post_act', c.layer, NULL, c.node_index, any_value(x.source_layer),
           any_value(x.source_head), any_value(x.source_node_index), any_value(x.source_token),
           sum(CASE WHEN (x.location = 'mlp.to_gate') = e.gated_mlp THEN c.c1 ELSE c.c2 END * x.r), any_value(c.grad)
    FROM reads x
    JOIN edge_switches() e ON e.model_id = x.model_id
    JOIN mlp_read_slopes(0, 32767, NULL) c
      ON c.prompt_id = x.prompt_id AND c.token = x.token AND c.layer = x.layer AND c.node_index = x.col
    WHERE x.location IN ('mlp.to_hidden', 'mlp.to_gate')
    GROUP BY c.prompt_id, c.token, c.layer, c.node_index
)
SELECT prompt_id, token::SMALLINT AS token, token2::SMALLINT AS token2, dst::VARCHAR AS dst, layer::SMALLINT AS layer,
       head::SMALLINT AS head, node_index::INTEGER AS node_index, up_dst::VARCHAR AS source_dst,
       source_layer::SMALLINT AS source_layer, source_head::SMALLINT AS source_head,
       source_node_index::INTEGER AS source_node_index, source_token::SMALLINT AS source_token,
       activation::DOUBLE AS activation, (grad * activation)::DOUBLE AS attribution
FROM rows;

-- Why edges out of (up_dst, up_layer, node) into the readers above cannot all be answered, or NULL when they
-- can: out of an SAE latent, the node's own checks; out of any node, what its later attention heads' sides
-- and residual SAEs' latents need stored (after the node's own checks and edge_writers_problem).
CREATE OR REPLACE MACRO out_edge_problem(up_dst, up_layer, node) AS TABLE
WITH reach AS (SELECT min(first_attn) AS first_attn, min(first_mlp) AS first_mlp FROM write_reach(up_dst, up_layer))
SELECT CASE
    WHEN up_dst = 'online_autoencoder_latent' AND NOT EXISTS (SELECT 1 FROM saes WHERE latent_dst = up_dst
                                                              AND layer IS NOT DISTINCT FROM up_layer)
        THEN 'this warehouse stores no SAE whose latents are ' || up_dst || ' at layer '
             || coalesce(up_layer::VARCHAR, 'NULL (the embedding)') || coalesce(': it has them at layers '
             || (SELECT string_agg(coalesce(layer::VARCHAR, 'NULL'), ', ' ORDER BY layer) FROM saes
                 WHERE latent_dst = up_dst), ': ingest with --sae to splice one in')
    WHEN up_dst = 'online_autoencoder_latent' AND (node IS NULL OR node < 0 OR node >= (SELECT max(d_sae) FROM saes
                                                   WHERE latent_dst = up_dst AND layer IS NOT DISTINCT FROM up_layer))
        THEN 'no latent ' || coalesce(node::VARCHAR, 'NULL') || ' in the SAE of ' || up_dst || ' at layer '
             || coalesce(up_layer::VARCHAR, 'NULL')
    WHEN up_dst = 'online_autoencoder_latent' AND NOT EXISTS (SELECT 1 FROM weights WHERE location = 'mlp.to_hidden')
        THEN 'this warehouse holds no input-side weights: ingest again with --input-weights all (no prompt is '
             || 'stored twice; the weights are added)'
    WHEN up_dst = 'online_autoencoder_latent' AND (SELECT first_mlp FROM reach) >= (SELECT max(n_layers) FROM models)
        THEN 'the SAE of ' || up_dst || ' at layer ' || coalesce(up_layer::VARCHAR, 'NULL')
             || ' is after the last block''s reads: no MLP neuron or attention head reads its latents'' writes'
    WHEN up_dst = 'online_autoencoder_latent' AND (SELECT bool_or(activation NOT IN ('gelu_tanh', 'gelu', 'silu', 'relu'))
                                                   FROM edge_switches())
        THEN 'edges know the activations gelu_tanh, gelu, silu and relu, not this model''s'
    WHEN up_dst = 'online_autoencoder_latent' AND NOT EXISTS (SELECT 1 FROM facts WHERE dst = 'mlp_pre_act'
                                                              AND forward IS NOT NULL)
        THEN 'edges into MLP neurons need their pre-activations: ingest with --locations including '
             || 'mlp.pre_act:forward (and mlp.post_act:forward,backward)'
    WHEN up_dst = 'online_autoencoder_latent' AND NOT EXISTS (SELECT 1 FROM facts WHERE dst = up_dst
                                                              AND layer IS NOT DISTINCT FROM up_layer
                                                              AND node_index = node AND forward > 0)
        THEN 'latent ' || coalesce(up_layer::VARCHAR, 'NULL') || ':' || node || ' of ' || up_dst
             || ' fires at no stored token: every edge out of it is 0'
    WHEN (SELECT first_attn FROM reach) >= (SELECT max(n_layers) FROM models) THEN NULL
    WHEN NOT EXISTS (SELECT 1 FROM facts WHERE dst = 'attn_weighted_sum_of_values' AND backward IS NOT NULL
                     AND layer >= (SELECT first_attn FROM reach))
        THEN 'edges out of a node reach the value sides of later attention heads, which need the gradient of '
             || 'their summed values: ingest with --locations including attn.v_out:backward'
    WHEN (SELECT bool_or(config->>'qk_norm' IS NOT NULL) FROM models)
        THEN 'edges out of a node reach the query and key sides of later attention heads, which edges do not '
             || 'model with a norm of q and k (this model''s qk_norm)'
    WHEN NOT EXISTS (SELECT 1 FROM facts WHERE dst = 'attn_query' AND layer >= (SELECT first_attn FROM reach))
         OR NOT EXISTS (SELECT 1 FROM facts WHERE dst = 'attn_key' AND layer >= (SELECT first_attn FROM reach))
        THEN 'edges out of a node reach the query and key sides of later attention heads, which need their '
             || 'stored queries and keys: ingest with --locations including attn.q:forward and attn.k:forward'
    WHEN EXISTS (SELECT 1 FROM autoencoder_sites() WHERE latent_dst = 'online_autoencoder_latent')
         AND NOT EXISTS (SELECT 1 FROM weights WHERE location = 'autoencoder.to_latent')
        THEN 'edges out of a node reach the latents of the residual SAEs after it, and this warehouse holds no SAE '
             || 'encoders: ingest again with --input-weights all and the same --sae (no prompt is stored twice)'
END AS problem;
