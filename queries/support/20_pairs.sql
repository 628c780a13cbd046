-- Which target/distractor pair each prompt's direct effects are taken for, and its tokens' factors.
-- t = NULL: each prompt's own ingested pair. t = a token id: that pair for every prompt. Factors are per
-- token (direction_factors, stored at ingest for every target and distractor; weight_factors for a token
-- it lacks), and a view meets them per stored row on a packed key (factor_key), the target's and the
-- distractor's each once: no table of pairs times factors is built, so one prompt's question costs one
-- prompt's rows and a new pair of stored tokens costs what an ingested pair does.

-- The architecture switches the views read from a model's recorded config: the final logits' soft cap
-- (NULL: uncapped) and whether the model norms each block's output before it joins the residual.
CREATE OR REPLACE MACRO model_switches() AS TABLE
SELECT model_id, (config->>'final_logit_softcap')::DOUBLE AS final_logit_softcap,
       coalesce((config->>'post_block_norms')::BOOLEAN, false) AS post_block_norms
FROM models;

-- A pair given at query time passes checked_pair first (10_weight_factors.sql): one that cannot be
-- answered (same token twice, an unembedding column not stored) raises rather than giving no rows. The
-- final scale is a scalar subquery so that the planner counts one row per prompt here (a join with the
-- facts would be estimated at a fifth of them), and views join the facts to these rows, not the reverse.
CREATE OR REPLACE MACRO prompt_pairs(t, d) AS TABLE
SELECT * FROM (
    SELECT p.prompt_id, p.model_id, (p.n_tokens - 1)::SMALLINT AS last_token,
           CASE WHEN c.target_id IS NULL THEN p.target_id ELSE c.target_id END AS target_id,
           CASE WHEN c.target_id IS NULL THEN p.distractor_id ELSE c.distractor_id END AS distractor_id,
           (SELECT s.forward::DOUBLE FROM facts s
            WHERE s.prompt_id = p.prompt_id AND s.dst = 'resid_final_layer_norm_scale' AND s.token = p.n_tokens - 1)
               AS final_scale,
           m.final_logit_softcap, m.post_block_norms
    FROM prompts p
    JOIN model_switches() m USING (model_id)
    CROSS JOIN checked_pair(t, d) c
    WHERE coalesce(c.target_id, p.target_id) IS NOT NULL
)
WHERE final_scale IS NOT NULL;

-- The factors of every token the pairs name: the table direction_factors (the ingest stores them for
-- every target and distractor it sees), and for a pair given at query time the factors of its tokens that
-- table lacks, computed from the weights. With t a literal (NULL in the views) the planner folds
-- `t IS NOT NULL` and plans no weight scan for each prompt's own pair.
CREATE OR REPLACE MACRO token_factors(t, d) AS TABLE
SELECT * FROM direction_factors WHERE t IS NULL OR token_id = t OR token_id = d
UNION ALL SELECT * FROM weight_factors(t, d, false) WHERE t IS NOT NULL;

-- prompt_pairs with the slope of each capped logit: logit = cap * tanh(z / cap) has dlogit/dz =
-- 1 - tanh(z / cap)^2, which multiplies that token's share of the final-residual gradient (1 without a
-- cap). z, the uncapped logit at the last token T, is r[L-1][T] . u_v / s_f[T] + bias_f . W_U[:, v], from
-- the stored final residual: a capped model's prompt without it (or without its final scale) has no
-- direct effects rather than wrong ones.
CREATE OR REPLACE MACRO prompt_objectives(t, d) AS TABLE
WITH p AS NOT MATERIALIZED (SELECT * FROM prompt_pairs(t, d)),
f AS (SELECT * FROM token_factors(t, d) WHERE kind IN ('residual', 'final_bias')),
z AS (
    SELECT c.prompt_id, f.token_id, sum(r.forward * f.value) / any_value(c.final_scale) AS value
    FROM p c
    JOIN models m USING (model_id)
    JOIN facts r
      ON r.prompt_id = c.prompt_id AND r.dst = 'resid_post_mlp' AND r.layer = m.n_layers - 1 AND r.token = c.last_token
    JOIN f ON f.model_id = c.model_id AND f.token_id IN (c.target_id, c.distractor_id) AND f.kind = 'residual'
          AND f.node_index = r.node_index
    WHERE c.final_logit_softcap IS NOT NULL
    GROUP BY c.prompt_id, f.token_id
),
uncapped AS (
    SELECT z.prompt_id, z.token_id, z.value + b.value AS value
    FROM z JOIN p USING (prompt_id) JOIN f b ON b.model_id = p.model_id AND b.token_id = z.token_id AND b.kind = 'final_bias'
),
-- (scalar subqueries, not joins: the planner then counts one row per prompt, as for prompt_pairs)
zs AS (
    SELECT p.*,
           (SELECT zt.value FROM uncapped zt WHERE zt.prompt_id = p.prompt_id AND zt.token_id = p.target_id) AS zt,
           (SELECT zd.value FROM uncapped zd WHERE zd.prompt_id = p.prompt_id AND zd.token_id = p.distractor_id) AS zd
    FROM p
)
SELECT * EXCLUDE (zt, zd), zt AS target_uncapped_logit, zd AS distractor_uncapped_logit,
       CASE WHEN final_logit_softcap IS NULL THEN 1 ELSE 1 - tanh(zt / final_logit_softcap) ^ 2 END AS target_slope,
       CASE WHEN final_logit_softcap IS NULL OR distractor_id IS NULL THEN 1
            ELSE 1 - tanh(zd / final_logit_softcap) ^ 2 END AS distractor_slope
FROM zs
WHERE final_logit_softcap IS NULL OR (zt IS NOT NULL AND (distractor_id IS NULL OR zd IS NOT NULL));

-- One factor's join key: (model, token, layer, node) packed into one BIGINT (model < 2^7, token < 2^24,
-- layer + 1 < 2^8 with 0 for no layer, node < 2^24). A view computes a stored row's key from the row
-- (layer, node) and its prompt's token, so a factor joins only after the row has met its prompt: the
-- planner cannot join prompts to factors first (a row per prompt and factor, 46 M for the MLP neurons of
-- 1000 SmolLM2 prompts), and the join with the prompts' last tokens reaches the scan of the stored rows.
CREATE OR REPLACE MACRO factor_key(model_id, token_id, layer, node_index) AS
(model_id::BIGINT << 56) | (token_id::BIGINT << 32) | (coalesce(layer::BIGINT + 1, 0) << 24) | node_index::BIGINT;

-- factor_key of a factor, raising where a field does not fit its bits (a key would then meet another's).
CREATE OR REPLACE MACRO checked_factor_key(model_id, token_id, layer, node_index) AS
CASE WHEN model_id BETWEEN 0 AND 127 AND token_id BETWEEN 0 AND 16777215 AND coalesce(layer, 0) BETWEEN 0 AND 254
          AND node_index BETWEEN 0 AND 16777215
     THEN factor_key(model_id, token_id, layer, node_index)
     ELSE error('factor key out of range: model ' || model_id || ', token ' || token_id || ', layer ' || layer
                || ', node ' || node_index)
END;

-- The node field of an attention factor's key: key/value head << 12 | channel, so that a stored value row
-- (keyed by its key/value head) meets the factors of every query head reading it. Query head h reads
-- key/value head h // (H / H_kv); channels must be below 4096.
CREATE OR REPLACE MACRO kv_node(head, channel, n_heads, n_kv_heads) AS
((head // (n_heads // n_kv_heads))::BIGINT << 12)
| CASE WHEN channel BETWEEN 0 AND 4095 THEN channel ELSE error('attention channel ' || channel || ' beyond 4095') END;

-- token_factors of one kind keyed by factor_key (for 'attn' factors the node field is kv_node), with each
-- factor's head ('attn': its query head).
CREATE OR REPLACE MACRO keyed_token_factors(t, d, factor_kind) AS TABLE
SELECT checked_factor_key(f.model_id, f.token_id, f.layer,
                          CASE WHEN factor_kind = 'attn' THEN kv_node(f.head, f.node_index, m.n_heads, m.n_kv_heads)
                               ELSE f.node_index END) AS k,
       f.head, f.value
FROM token_factors(t, d) f JOIN models m USING (model_id)
WHERE f.kind = factor_kind;

-- Each prompt's factors of one kind, slopes applied: value = c_t * target factor - c_d * distractor factor
-- (the distractor's 0 without one), one row per prompt and factor (layer, head, node_index), for the
-- kinds with few factors (the residual channels, the biases).
CREATE OR REPLACE MACRO pair_join_factors(t, d, factor_kind) AS TABLE
WITH f AS (SELECT * FROM token_factors(t, d) WHERE kind = factor_kind)
SELECT p.prompt_id, p.model_id, p.last_token, p.final_scale, p.post_block_norms, ft.layer, ft.head, ft.node_index,
       p.target_slope * ft.value - p.distractor_slope * coalesce(fd.value, 0) AS value
FROM prompt_objectives(t, d) p
JOIN f ft ON ft.model_id = p.model_id AND ft.token_id = p.target_id
LEFT JOIN f fd
  ON fd.model_id = p.model_id AND fd.token_id = p.distractor_id AND fd.layer IS NOT DISTINCT FROM ft.layer
 AND fd.head IS NOT DISTINCT FROM ft.head AND fd.node_index = ft.node_index;

-- The scale of the norm after block `block` ('attn' or 'mlp') per (prompt, layer, token), in models that
-- norm block outputs: it divides every write of that block at that token. Views LEFT JOIN it and keep a
-- row only where it is found or the model has no such norm (post_block_norms), so a model whose scales
-- were not stored gets no rows rather than undivided ones.
CREATE OR REPLACE MACRO post_block_scales(block) AS TABLE
SELECT prompt_id, layer, token, value::DOUBLE AS value
FROM activations
WHERE dst = block || '_output_layer_norm_scale' AND pass_type = 'forward';
