-- Edges between two nodes (docs/DERIVED_SCALARS.md, "Edges"), from stored forward and backward rows and
-- the input-side weights (`actwh ingest --input-weights all`), no model run. An upstream node writes w_up
-- into the residual at its token; a downstream subnode reads the residual r there. With the norm scales held
-- constant (the stored scales), for a downstream MLP neuron j of layer L at token t:
--     activation  = d a[L,t,j] / dr . w_up           (the reference's mlp_in_edge_activation)
--     attribution = dL/da[L,t,j] . activation        (mlp_in_edge_attribution: the stored gradient of a)
-- where d a/dr = phi'(z) u1 / s for a plain MLP (a = phi(z)) and phi'(g) m u1 / s + phi(g) u2 / s for a gated
-- one (a = phi(g) m): u1 the normed read of the pre-activation's column (the gate's in a gated MLP), u2 the
-- up projection's, u = P(gain_pre_mlp * W[:, j]) (P removes the mean for LayerNorm), s the norm's scale at t.
-- In a model that norms block outputs a write joins as gain_post * w / s_post[l', t] (scale held).
-- Upstream: the embedding, every attention node (q = t, k, h) and MLP neuron before the MLP, and the output
-- biases of those blocks as their own rows. So for a plain MLP the activations of one (prompt, token) sum to
-- phi'(z) (z - b_in[j] - beta_pre_mlp . W_in[:, j]). A latent of an SAE on the residual stream reads the same
-- way (read direction and slope in queries/support/55_autoencoder_reads.sql) from the writes before its site.
--
-- Every row: prompt_id, token, token2, dst, layer, head, node_index (the downstream subnode), source_dst,
-- source_layer, source_head, source_node_index, source_token (the upstream node: an attention node's
-- source_token is its key token; the embedding's and a bias's layer/head/node_index are NULL where they have
-- none), activation, attribution (NULL without a stored gradient of the downstream node).

-- The architecture switches edges read from a model's recorded config.
CREATE OR REPLACE MACRO edge_switches() AS TABLE
SELECT model_id, norm, n_heads, n_kv_heads, n_layers, d_mlp, config->>'activation' AS activation,
       coalesce((config->>'gated_mlp')::BOOLEAN, false) AS gated_mlp,
       coalesce((config->>'parallel_residual')::BOOLEAN, false) AS parallel_residual,
       coalesce((config->>'post_block_norms')::BOOLEAN, false) AS post_block_norms
FROM models;

-- Why the writes an edge sums over are not all stored, or NULL when they are (one row): every run whose
-- prompts hold facts must have captured the embedding, every attention node with the values it writes,
-- every MLP neuron and the norm scales the reads and writes go through (the output norms' too, in a model
-- that norms block outputs), at every layer. A run of --layers or of fewer --locations leaves writes out,
-- and its edges would miss them with no sign (a pre-activation's decomposition would no longer add up).
CREATE OR REPLACE MACRO edge_writers_problem() AS TABLE
WITH needed AS (
    SELECT r.run_id, r.layers,
           list_filter(['resid.post_emb:forward', 'attn.qk_probs:forward', 'attn.v:forward', 'mlp.post_act:forward',
                        'attn_ln.scale:forward', 'mlp_ln.scale:forward']
                       || CASE WHEN e.post_block_norms
                               THEN ['attn_post_ln.scale:forward', 'mlp_post_ln.scale:forward'] ELSE [] END,
                       x -> NOT list_contains(r.locations, x)) AS missing
    FROM runs r JOIN edge_switches() e USING (model_id)
    WHERE r.run_id IN (SELECT DISTINCT run_id FROM prompts WHERE facts_stored)
)
SELECT (
    SELECT CASE
        WHEN len(missing) > 0
            THEN 'edges need every write into the residual stream and its norm scales stored: run ' || run_id
                 || ' did not store ' || array_to_string(missing, ', ') || ' (ingest with the default --locations '
                 || 'plus mlp.pre_act:forward)'
        ELSE 'edges need every write into the residual stream stored: run ' || run_id || ' stored only layers '
             || array_to_string(layers, ', ') || ' (ingest without --layers)'
    END
    FROM needed WHERE len(missing) > 0 OR layers IS NOT NULL
    ORDER BY run_id LIMIT 1
) AS problem;

-- erf to 1.5e-7 (Abramowitz and Stegun 7.1.26): the exact GELU's slope needs it and DuckDB has none.
CREATE OR REPLACE MACRO edge_erf(x) AS
sign(x) * (1 - (((((1.061405429 * (1 / (1 + 0.3275911 * abs(x))) - 1.453152027) * (1 / (1 + 0.3275911 * abs(x)))
  + 1.421413741) * (1 / (1 + 0.3275911 * abs(x))) - 0.284496736) * (1 / (1 + 0.3275911 * abs(x))) + 0.254829592)
  * (1 / (1 + 0.3275911 * abs(x)))) * exp(-x * x));

-- phi(z) and phi'(z) of the MLP activation functions the families use.
CREATE OR REPLACE MACRO mlp_activation(act, z) AS
CASE act
    WHEN 'gelu_tanh' THEN 0.5 * z * (1 + tanh(0.7978845608028654 * (z + 0.044715 * z * z * z)))
    WHEN 'gelu' THEN 0.5 * z * (1 + edge_erf(z / sqrt(2)))
    WHEN 'silu' THEN z / (1 + exp(-z))
    WHEN 'relu' THEN greatest(z, 0)
END;

CREATE OR REPLACE MACRO mlp_activation_slope(act, z) AS
CASE act
    WHEN 'gelu_tanh' THEN 0.5 * (1 + tanh(0.7978845608028654 * (z + 0.044715 * z * z * z)))
        + 0.5 * z * (1 - pow(tanh(0.7978845608028654 * (z + 0.044715 * z * z * z)), 2))
          * 0.7978845608028654 * (1 + 3 * 0.044715 * z * z)
    WHEN 'gelu' THEN 0.5 * (1 + edge_erf(z / sqrt(2))) + z * exp(-0.5 * z * z) / sqrt(2 * pi())
    WHEN 'silu' THEN (1 / (1 + exp(-z))) * (1 + z * (1 - 1 / (1 + exp(-z))))
    WHEN 'relu' THEN CASE WHEN z > 0 THEN 1 ELSE 0 END
END;

-- Why edges into or out of (down_dst, down_layer, j) cannot be answered, or NULL when they can; first_read:
-- the first layer whose MLP pre-activations the answer reads (the node's own for edges into it, the next for
-- edges out of it).
CREATE OR REPLACE MACRO edge_problem(down_dst, down_layer, j, first_read) AS TABLE
SELECT CASE
    WHEN down_dst IS DISTINCT FROM 'mlp_post_act'
        THEN 'edges are built into MLP neurons (mlp_post_act) and SAE latents (online_autoencoder_latent), and out '
             || 'of MLP neurons, not ' || coalesce(down_dst, 'NULL')
    WHEN NOT EXISTS (SELECT 1 FROM weights WHERE location = 'mlp.to_hidden')
        THEN 'this warehouse holds no input-side weights: ingest again with --input-weights all (no prompt is '
             || 'stored twice; the weights are added)'
    WHEN down_layer IS NULL OR j IS NULL OR down_layer < 0 OR down_layer >= (SELECT max(n_layers) FROM models)
         OR j < 0 OR j >= (SELECT max(d_mlp) FROM models)
        THEN 'no MLP neuron ' || coalesce(down_layer::VARCHAR, 'NULL') || ':' || coalesce(j::VARCHAR, 'NULL')
             || ' in this warehouse''s model'
    WHEN (SELECT bool_or(activation NOT IN ('gelu_tanh', 'gelu', 'silu', 'relu')) FROM edge_switches())
        THEN 'edges know the activations gelu_tanh, gelu, silu and relu, not this model''s'
    WHEN first_read >= (SELECT max(n_layers) FROM models)
        THEN 'MLP neuron ' || down_layer || ':' || j || ' is in the last layer: no MLP neuron reads its write'
    -- (the first case repeated inside the scan: a refusal's subqueries all run, whatever the question)
    WHEN NOT EXISTS (SELECT 1 FROM facts WHERE down_dst = 'mlp_post_act' AND dst = 'mlp_pre_act'
                     AND layer >= first_read AND forward IS NOT NULL)
        THEN 'edges into MLP neurons need their pre-activations: ingest with --locations including '
             || 'mlp.pre_act:forward (and mlp.post_act:forward,backward)'
END AS problem;

-- The normed read directions of neuron j of layer down_layer, per model and residual channel: u1 (the
-- pre-activation's column), u2 (the up projection's in a gated MLP, else 0), from its columns' vectors.
CREATE OR REPLACE MACRO mlp_read_directions(down_layer, j) AS TABLE
WITH x AS (
    SELECT model_id, location, unnest(vector)::DOUBLE AS value, generate_subscripts(vector, 1) - 1 AS channel
    FROM weight_vectors WHERE location IN ('mlp.to_hidden', 'mlp.to_gate') AND layer = down_layer AND vector_index = j
),
cols AS (
    SELECT x.model_id, x.channel, (x.location = 'mlp.to_gate') = s.gated_mlp AS first,
           x.value * coalesce(g.value, 1) AS value, s.norm
    FROM x
    JOIN edge_switches() s ON s.model_id = x.model_id
    LEFT JOIN weights g
      ON g.model_id = x.model_id AND g.location = 'layer_norm_gain.pre_mlp' AND g.layer = down_layer AND g.row_index = x.channel
),
centred AS (
    SELECT model_id, channel, first,
           value - CASE WHEN norm = 'layernorm' THEN avg(value) OVER (PARTITION BY model_id, first) ELSE 0 END AS value
    FROM cols
)
SELECT model_id, channel, sum(CASE WHEN first THEN value ELSE 0 END) AS u1,
       sum(CASE WHEN first THEN 0 ELSE value END) AS u2
FROM centred GROUP BY model_id, channel;

-- Per prompt, token and MLP neuron (layers first_layer to last_layer; neuron j, or every neuron for NULL), the
-- neuron's slopes on its two reads divided by the pre-MLP norm's scale (c1, c2: activation = c1 (w . u1) +
-- c2 (w . u2)), and the stored gradient of its activation. A gated neuron's up read m is a / phi(g).
CREATE OR REPLACE MACRO mlp_read_slopes(first_layer, last_layer, j) AS TABLE
WITH n AS (
    SELECT z.prompt_id, p.model_id, z.token, z.layer, z.node_index, z.forward::DOUBLE AS z, a.forward::DOUBLE AS a,
           a.backward::DOUBLE AS grad, coalesce(s.forward::DOUBLE, 1) AS scale, e.activation AS act, e.gated_mlp
    FROM facts z
    JOIN prompts p ON p.prompt_id = z.prompt_id
    JOIN edge_switches() e ON e.model_id = p.model_id
    JOIN facts a
      ON a.prompt_id = z.prompt_id AND a.token = z.token AND a.dst = 'mlp_post_act' AND a.layer = z.layer
     AND a.node_index = z.node_index
    LEFT JOIN facts s
      ON s.prompt_id = z.prompt_id AND s.token = z.token AND s.dst = 'mlp_input_layer_norm_scale' AND s.layer = z.layer
    WHERE z.dst = 'mlp_pre_act' AND z.forward IS NOT NULL AND a.forward IS NOT NULL
      AND z.layer BETWEEN first_layer AND last_layer AND (j IS NULL OR z.node_index = j)
)
SELECT prompt_id, model_id, token, layer, node_index, grad,
       CASE WHEN NOT gated_mlp THEN mlp_activation_slope(act, z)
            WHEN mlp_activation(act, z) = 0 THEN 0
            ELSE mlp_activation_slope(act, z) * a / mlp_activation(act, z) END / scale AS c1,
       CASE WHEN gated_mlp THEN mlp_activation(act, z) ELSE 0 END / scale AS c2
FROM n;

-- The readers of the residual edges are built into: an MLP neuron (mlp_post_act) or a latent of an SAE on the
-- residual stream (online_autoencoder_latent, queries/support/55_autoencoder_reads.sql). Per model, the last
-- attention and MLP layers whose writes reach the reader (an MLP neuron of layer L reads attention L, unless
-- the block runs the two in parallel, and MLP L - 1), its read directions and its slopes.
CREATE OR REPLACE MACRO edge_reach(down_dst, down_layer) AS TABLE
SELECT model_id, down_layer - CASE WHEN parallel_residual THEN 1 ELSE 0 END AS last_attn, down_layer - 1 AS last_mlp
FROM edge_switches() WHERE down_dst = 'mlp_post_act'
UNION ALL SELECT * FROM autoencoder_reach(down_dst, down_layer) WHERE down_dst IS DISTINCT FROM 'mlp_post_act';

CREATE OR REPLACE MACRO read_directions(down_dst, down_layer, j) AS TABLE
SELECT * FROM mlp_read_directions(down_layer, j) WHERE down_dst = 'mlp_post_act'
UNION ALL SELECT * FROM autoencoder_read_directions(down_dst, down_layer, j) WHERE down_dst IS DISTINCT FROM 'mlp_post_act';

CREATE OR REPLACE MACRO read_slopes(down_dst, down_layer, j) AS TABLE
SELECT * FROM mlp_read_slopes(down_layer, down_layer, j) WHERE down_dst = 'mlp_post_act'
UNION ALL SELECT * FROM autoencoder_read_slopes(down_dst, down_layer, j) WHERE down_dst IS DISTINCT FROM 'mlp_post_act';

-- Weight-only factors: each upstream weight row that reaches the reader dotted with its reads as the writes
-- reach them (u1, u2 times the gain of the norm after the block, where the model norms block outputs). Kinds
-- 'mlp': per layer and neuron; 'attn': per layer, head and value channel; 'attn_bias' and 'mlp_bias': per layer.
CREATE OR REPLACE MACRO edge_factors(down_dst, down_layer, j) AS TABLE
WITH u AS MATERIALIZED (SELECT * FROM read_directions(down_dst, down_layer, j)),
-- the blocks' output biases and the gains of the norms after them (where the model has them): one scan
small AS MATERIALIZED (
    SELECT model_id, split_part(location, '.', 1) AS block, location, layer, row_index, value::DOUBLE AS value
    FROM weights
    WHERE location IN ('attn.residual_bias', 'mlp.residual_bias', 'layer_norm_gain.post_attn', 'layer_norm_gain.post_mlp')
      AND layer <= coalesce(down_layer, -1)
),
reads AS MATERIALIZED (
    SELECT u.model_id, b.block, b.layer, u.channel, u.u1 * coalesce(g.value, 1) AS u1,
           u.u2 * coalesce(g.value, 1) AS u2, b.value AS bias
    FROM u
    JOIN edge_reach(down_dst, down_layer) r ON r.model_id = u.model_id
    JOIN small b ON b.model_id = u.model_id AND b.location LIKE '%.residual_bias' AND b.row_index = u.channel
    LEFT JOIN small g
      ON g.model_id = u.model_id AND g.location = 'layer_norm_gain.post_' || b.block AND g.layer = b.layer
     AND g.row_index = u.channel
    WHERE b.layer <= CASE b.block WHEN 'attn' THEN r.last_attn ELSE r.last_mlp END
),
-- the reads as lists ordered by residual channel, one per written matrix and layer, each dotted with every
-- vector that matrix writes (weight_vectors): one row per vector instead of one per value
directions AS MATERIALIZED (
    SELECT model_id, block || '.to_residual' AS location, layer, list(u1 ORDER BY channel) AS u1,
           list(u2 ORDER BY channel) AS u2
    FROM reads GROUP BY model_id, block, layer
)
-- (a branch per kind, so that a use keeping one kind reads only its matrix)
SELECT v.model_id, 'mlp' AS kind, v.layer, NULL::SMALLINT AS head, v.vector_index AS node_index,
       list_dot_product(v.vector::DOUBLE[], d.u1) AS f1, list_dot_product(v.vector::DOUBLE[], d.u2) AS f2
FROM weight_vectors v JOIN directions d ON d.model_id = v.model_id AND d.location = v.location AND d.layer = v.layer
WHERE v.location = 'mlp.to_residual' AND v.layer <= coalesce(down_layer, -1)
UNION ALL
SELECT v.model_id, 'attn', v.layer, v.head, v.vector_index, list_dot_product(v.vector::DOUBLE[], d.u1),
       list_dot_product(v.vector::DOUBLE[], d.u2)
FROM weight_vectors v JOIN directions d ON d.model_id = v.model_id AND d.location = v.location AND d.layer = v.layer
WHERE v.location = 'attn.to_residual' AND v.layer <= coalesce(down_layer, -1)
UNION ALL
SELECT model_id, block || '_bias', layer, NULL, NULL, sum(bias * u1), sum(bias * u2)
FROM reads
GROUP BY model_id, block, layer;

-- Edges into the reader j of (down_dst, down_layer) (an MLP neuron or a residual SAE's latent) from every
-- upstream node that writes before it at every stored (prompt, token) its slopes are given for.
CREATE OR REPLACE MACRO residual_in_edges(down_dst, down_layer, j) AS TABLE
-- inlined where used: each use keeps one kind of factor and the prompts the query filters on, so a question
-- about one source or one prompt computes only its factors and reads only its rows
WITH c AS NOT MATERIALIZED (SELECT * FROM read_slopes(down_dst, down_layer, j)),
f AS NOT MATERIALIZED (SELECT * FROM edge_factors(down_dst, down_layer, j)),
u AS MATERIALIZED (SELECT * FROM read_directions(down_dst, down_layer, j)),
attn_layers AS (
    SELECT f.*, e.n_heads // e.n_kv_heads AS grp FROM f JOIN edge_switches() e USING (model_id) WHERE f.kind = 'attn'
),
-- per (prompt, layer, key token, query head): the stored value of its key/value head dotted with the factors
value_reads AS (
    SELECT v.prompt_id, v.layer, v.token AS key_token, f.head, sum(v.forward * f.f1) AS r1, sum(v.forward * f.f2) AS r2
    FROM facts v
    JOIN prompts p ON p.prompt_id = v.prompt_id
    JOIN attn_layers f ON f.model_id = p.model_id AND f.layer = v.layer AND f.head // f.grp = v.head AND f.node_index = v.node_index
    WHERE v.dst = 'attn_value' AND v.forward IS NOT NULL
    GROUP BY v.prompt_id, v.layer, v.token, f.head
),
rows AS (
    SELECT e.prompt_id, e.token, 'resid_post_embedding' AS source_dst, NULL::SMALLINT AS source_layer,
           NULL::SMALLINT AS source_head, NULL::INTEGER AS source_node_index, e.token AS source_token,
           sum(e.forward * (c.c1 * u.u1 + c.c2 * u.u2)) AS activation, any_value(c.grad) AS grad
    FROM facts e
    JOIN c ON c.prompt_id = e.prompt_id AND c.token = e.token
    JOIN u ON u.model_id = c.model_id AND u.channel = e.node_index
    WHERE e.dst = 'resid_post_embedding' AND e.forward IS NOT NULL
    GROUP BY e.prompt_id, e.token
    UNION ALL
    SELECT a.prompt_id, a.token, 'mlp_post_act', a.layer, NULL, a.node_index, a.token,
           a.forward * (c.c1 * f.f1 + c.c2 * f.f2) / coalesce(s.value, 1), c.grad
    FROM facts a
    JOIN c ON c.prompt_id = a.prompt_id AND c.token = a.token
    JOIN f ON f.model_id = c.model_id AND f.kind = 'mlp' AND f.layer = a.layer AND f.node_index = a.node_index
    JOIN edge_switches() e ON e.model_id = c.model_id
    LEFT JOIN post_block_scales('mlp') s ON s.prompt_id = a.prompt_id AND s.layer = a.layer AND s.token = a.token
    WHERE a.dst = 'mlp_post_act' AND a.forward IS NOT NULL AND a.layer <= coalesce(down_layer, -1)
      AND (s.value IS NOT NULL OR NOT e.post_block_norms)
    UNION ALL
    SELECT p.prompt_id, p.token, 'attn_qk_probs', p.layer, p.node_index, p.node_index, p.token2,
           p.forward * (c.c1 * r.r1 + c.c2 * r.r2) / coalesce(s.value, 1), c.grad
    FROM facts p
    JOIN c ON c.prompt_id = p.prompt_id AND c.token = p.token
    JOIN value_reads r ON r.prompt_id = p.prompt_id AND r.layer = p.layer AND r.key_token = p.token2 AND r.head = p.node_index
    JOIN edge_switches() e ON e.model_id = c.model_id
    LEFT JOIN post_block_scales('attn') s ON s.prompt_id = p.prompt_id AND s.layer = p.layer AND s.token = p.token
    WHERE p.dst = 'attn_qk_probs' AND p.forward IS NOT NULL AND (s.value IS NOT NULL OR NOT e.post_block_norms)
    UNION ALL
    SELECT c.prompt_id, c.token, CASE f.kind WHEN 'attn_bias' THEN 'attn_residual_bias' ELSE 'mlp_residual_bias' END,
           f.layer, NULL, NULL, c.token, (c.c1 * f.f1 + c.c2 * f.f2) / coalesce(s.forward, 1), c.grad
    FROM c
    JOIN f ON f.model_id = c.model_id AND f.kind IN ('attn_bias', 'mlp_bias')
    JOIN edge_switches() e ON e.model_id = c.model_id
    LEFT JOIN facts s
      ON s.prompt_id = c.prompt_id AND s.token = c.token AND s.layer = f.layer
     AND s.dst IN ('attn_output_layer_norm_scale', 'mlp_output_layer_norm_scale')
     AND s.dst = CASE f.kind WHEN 'attn_bias' THEN 'attn' ELSE 'mlp' END || '_output_layer_norm_scale'
    WHERE s.forward IS NOT NULL OR NOT e.post_block_norms
)
SELECT prompt_id, token::SMALLINT AS token, NULL::SMALLINT AS token2, down_dst::VARCHAR AS dst,
       down_layer::SMALLINT AS layer, NULL::SMALLINT AS head, j::INTEGER AS node_index, source_dst::VARCHAR AS source_dst,
       source_layer::SMALLINT AS source_layer, source_head::SMALLINT AS source_head,
       source_node_index::INTEGER AS source_node_index, source_token::SMALLINT AS source_token,
       activation::DOUBLE AS activation, (grad * activation)::DOUBLE AS attribution
FROM rows;

-- One line for a question edges cannot answer (`problem`, from edge_problem; NULL when they can), as a row
-- of the edge shape and no rows when there is none: the last branch of edges_into, edges_from and
-- edges_between, so an answer left empty by the checks raises instead. One branch per question, its
-- problems in a fixed order: two branches that both raise would race, and the message would vary by run.
CREATE OR REPLACE MACRO edge_refusal(problem) AS TABLE
SELECT e::INTEGER AS prompt_id, e::SMALLINT AS token, e::SMALLINT AS token2, e AS dst, e::SMALLINT AS layer,
       e::SMALLINT AS head, e::INTEGER AS node_index, e AS source_dst, e::SMALLINT AS source_layer,
       e::SMALLINT AS source_head, e::INTEGER AS source_node_index, e::SMALLINT AS source_token,
       e::DOUBLE AS activation, e::DOUBLE AS attribution
FROM (SELECT error(problem) AS e WHERE problem IS NOT NULL);

-- Edges out of MLP neuron i of layer up_layer into every MLP neuron j of a later layer at the same token:
-- activation = a[up,t,i] / s_post[up,t] (c1 F1[L,j] + c2 F2[L,j]), F_r[L,j] = P(gain_post * W_out[up][i,:]) .
-- (gain_pre_mlp[L] * W_r[L][:, j]) (P moved onto the write: P is its own transpose).
CREATE OR REPLACE MACRO mlp_out_edges(up_layer, i) AS TABLE
WITH w AS (
    SELECT o.model_id, o.col_index AS channel, o.value::DOUBLE * coalesce(g.value, 1) AS value, e.norm, e.gated_mlp
    FROM weights o
    JOIN edge_switches() e ON e.model_id = o.model_id
    LEFT JOIN weights g
      ON g.model_id = o.model_id AND g.location = 'layer_norm_gain.post_mlp' AND g.layer = o.layer AND g.row_index = o.col_index
    WHERE o.location = 'mlp.to_residual' AND o.layer = up_layer AND o.row_index = i
),
wc AS (
    SELECT model_id, channel, gated_mlp,
           value - CASE WHEN norm = 'layernorm' THEN avg(value) OVER (PARTITION BY model_id) ELSE 0 END AS value
    FROM w
),
-- the centred write times each later layer's pre-MLP gain, as a list ordered by residual channel
wg AS MATERIALIZED (
    SELECT wc.model_id, wc.gated_mlp, l.layer, list(wc.value * coalesce(g.value, 1) ORDER BY wc.channel) AS value
    FROM wc
    JOIN (SELECT DISTINCT model_id, layer FROM weights WHERE location = 'mlp.residual_bias' AND layer > up_layer) l
      ON l.model_id = wc.model_id
    LEFT JOIN weights g
      ON g.model_id = wc.model_id AND g.location = 'layer_norm_gain.pre_mlp' AND g.layer = l.layer AND g.row_index = wc.channel
    GROUP BY wc.model_id, wc.gated_mlp, l.layer
),
-- dotted with every read column of the later layers (weight_vectors)
f AS (
    SELECT r.model_id, r.layer, r.vector_index AS node_index,
           sum(CASE WHEN (r.location = 'mlp.to_gate') = w.gated_mlp THEN list_dot_product(r.vector::DOUBLE[], w.value) END) AS f1,
           coalesce(sum(CASE WHEN (r.location = 'mlp.to_gate') = w.gated_mlp THEN NULL
                             ELSE list_dot_product(r.vector::DOUBLE[], w.value) END), 0) AS f2
    FROM weight_vectors r
    JOIN wg w ON w.model_id = r.model_id AND w.layer = r.layer
    WHERE r.location IN ('mlp.to_hidden', 'mlp.to_gate') AND r.layer > up_layer
    GROUP BY r.model_id, r.layer, r.vector_index
)
SELECT a.prompt_id, a.token::SMALLINT AS token, NULL::SMALLINT AS token2, 'mlp_post_act'::VARCHAR AS dst,
       c.layer::SMALLINT AS layer, NULL::SMALLINT AS head, c.node_index::INTEGER AS node_index,
       'mlp_post_act'::VARCHAR AS source_dst, a.layer::SMALLINT AS source_layer, NULL::SMALLINT AS source_head,
       a.node_index::INTEGER AS source_node_index, a.token::SMALLINT AS source_token,
       (a.forward * (c.c1 * f.f1 + c.c2 * f.f2) / coalesce(s.value, 1))::DOUBLE AS activation,
       (c.grad * a.forward * (c.c1 * f.f1 + c.c2 * f.f2) / coalesce(s.value, 1))::DOUBLE AS attribution
FROM facts a
JOIN mlp_read_slopes(up_layer + 1, 32767, NULL) c ON c.prompt_id = a.prompt_id AND c.token = a.token
JOIN f ON f.model_id = c.model_id AND f.layer = c.layer AND f.node_index = c.node_index
JOIN edge_switches() e ON e.model_id = c.model_id
LEFT JOIN post_block_scales('mlp') s ON s.prompt_id = a.prompt_id AND s.layer = a.layer AND s.token = a.token
WHERE a.dst = 'mlp_post_act' AND a.forward IS NOT NULL AND a.layer = up_layer AND a.node_index = i
  AND (s.value IS NOT NULL OR NOT e.post_block_norms);

-- The one edge from MLP neuron i of layer up_layer into MLP neuron j of a later layer down_layer, at every
-- stored (prompt, token): the rows of edges_into(down_dst, down_layer, j) whose source is that neuron, from the
-- write's single factor (one row of W_out against the reader's columns), so a question about one edge across
-- the whole warehouse reads only the two neurons' rows.
CREATE OR REPLACE MACRO edges_between(down_dst, down_layer, j, up_dst, up_layer, i) AS TABLE
WITH u AS MATERIALIZED (SELECT * FROM mlp_read_directions(down_layer, j)),
w AS (
    SELECT o.model_id, sum(o.value * coalesce(g.value, 1) * u.u1) AS f1, sum(o.value * coalesce(g.value, 1) * u.u2) AS f2
    FROM weights o
    JOIN u ON u.model_id = o.model_id AND u.channel = o.col_index
    LEFT JOIN weights g
      ON g.model_id = o.model_id AND g.location = 'layer_norm_gain.post_mlp' AND g.layer = o.layer AND g.row_index = o.col_index
    WHERE o.location = 'mlp.to_residual' AND o.layer = up_layer AND o.row_index = i AND up_layer < down_layer
    GROUP BY o.model_id
)
SELECT a.prompt_id, a.token::SMALLINT AS token, NULL::SMALLINT AS token2, 'mlp_post_act'::VARCHAR AS dst,
       down_layer::SMALLINT AS layer, NULL::SMALLINT AS head, j::INTEGER AS node_index,
       'mlp_post_act'::VARCHAR AS source_dst, a.layer::SMALLINT AS source_layer, NULL::SMALLINT AS source_head,
       a.node_index::INTEGER AS source_node_index, a.token::SMALLINT AS source_token,
       (a.forward * (c.c1 * w.f1 + c.c2 * w.f2) / coalesce(s.value, 1))::DOUBLE AS activation,
       (c.grad * a.forward * (c.c1 * w.f1 + c.c2 * w.f2) / coalesce(s.value, 1))::DOUBLE AS attribution
FROM facts a
JOIN mlp_read_slopes(down_layer, down_layer, j) c ON c.prompt_id = a.prompt_id AND c.token = a.token
JOIN w ON w.model_id = c.model_id
JOIN edge_switches() e ON e.model_id = c.model_id
LEFT JOIN post_block_scales('mlp') s ON s.prompt_id = a.prompt_id AND s.layer = a.layer AND s.token = a.token
WHERE a.dst = 'mlp_post_act' AND a.forward IS NOT NULL AND a.layer = up_layer AND a.node_index = i
  AND (s.value IS NOT NULL OR NOT e.post_block_norms) AND down_dst = 'mlp_post_act' AND up_dst = 'mlp_post_act'
UNION ALL SELECT * FROM edge_refusal(coalesce(
    (SELECT problem FROM edge_problem(down_dst, down_layer, j, down_layer)),
    CASE WHEN up_layer >= down_layer THEN 'MLP neuron ' || up_layer || ':' || i || ' does not write before MLP neuron '
        || down_layer || ':' || j || ' reads: give an earlier layer as the source' END,
    (SELECT problem FROM edge_problem(up_dst, up_layer, i, up_layer + 1))));
