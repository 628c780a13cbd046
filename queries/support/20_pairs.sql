-- Which target/distractor pair each prompt's direct effects are taken for, and that pair's factors.
-- t = NULL: each prompt's own ingested pair, factors from the materialised direction_factors table.
-- t = a token id: that pair for every prompt, factors computed on the fly from the weights.

-- The architecture switches the views read from a model's recorded config: the final logits' soft cap
-- (NULL: uncapped) and whether the model norms each block's output before it joins the residual.
CREATE OR REPLACE MACRO model_switches() AS TABLE
SELECT model_id, (config->>'final_logit_softcap')::DOUBLE AS final_logit_softcap,
       coalesce((config->>'post_block_norms')::BOOLEAN, false) AS post_block_norms
FROM models;

-- A pair given at query time passes checked_pair first (10_weight_factors.sql): one that cannot be
-- answered (same token twice, an unembedding column not stored) raises rather than giving no rows.
CREATE OR REPLACE MACRO prompt_pairs(t, d) AS TABLE
SELECT p.prompt_id, p.model_id, s.token AS last_token,
       CASE WHEN c.target_id IS NULL THEN p.target_id ELSE c.target_id END AS target_id,
       CASE WHEN c.target_id IS NULL THEN p.distractor_id ELSE c.distractor_id END AS distractor_id,
       s.value::DOUBLE AS final_scale, m.final_logit_softcap, m.post_block_norms
FROM prompts p
JOIN model_switches() m USING (model_id)
JOIN activations s
  ON s.prompt_id = p.prompt_id AND s.dst = 'resid_final_layer_norm_scale' AND s.pass_type = 'forward' AND s.token = p.n_tokens - 1
CROSS JOIN checked_pair(t, d) c
WHERE coalesce(c.target_id, p.target_id) IS NOT NULL;

-- The factors of every token the pairs name: the direction_factors table for ingested pairs, computed
-- from the weights for a pair given at query time.
CREATE OR REPLACE MACRO token_factors(t, d) AS TABLE
SELECT * FROM direction_factors WHERE t IS NULL
UNION ALL SELECT * FROM direction_factors_for(t)
UNION ALL SELECT * FROM direction_factors_for(d);

-- prompt_pairs with the slope of each capped logit: logit = cap * tanh(z / cap) has dlogit/dz =
-- 1 - tanh(z / cap)^2, which multiplies that token's share of the final-residual gradient (1 without a
-- cap). z, the uncapped logit at the last token T, is r[L-1][T] . u_v / s_f[T] + bias_f . W_U[:, v], from
-- the stored final residual: a capped model's prompt without it (or without its final scale) has no
-- direct effects rather than wrong ones.
CREATE OR REPLACE MACRO prompt_objectives(t, d) AS TABLE
WITH p AS (SELECT * FROM prompt_pairs(t, d)),
f AS (SELECT * FROM token_factors(t, d) WHERE kind IN ('residual', 'final_bias')),
z AS (
    SELECT c.prompt_id, f.token_id, sum(r.value * f.value) / any_value(c.final_scale) AS value
    FROM p c
    JOIN models m USING (model_id)
    JOIN activations r
      ON r.prompt_id = c.prompt_id AND r.dst = 'resid_post_mlp' AND r.pass_type = 'forward'
     AND r.layer = m.n_layers - 1 AND r.token = c.last_token
    JOIN f ON f.model_id = c.model_id AND f.token_id IN (c.target_id, c.distractor_id) AND f.kind = 'residual'
          AND f.node_index = r.node_index
    WHERE c.final_logit_softcap IS NOT NULL
    GROUP BY c.prompt_id, f.token_id
),
uncapped AS (
    SELECT z.prompt_id, z.token_id, z.value + b.value AS value
    FROM z JOIN p USING (prompt_id) JOIN f b ON b.model_id = p.model_id AND b.token_id = z.token_id AND b.kind = 'final_bias'
)
SELECT p.*, zt.value AS target_uncapped_logit, zd.value AS distractor_uncapped_logit,
       CASE WHEN p.final_logit_softcap IS NULL THEN 1 ELSE 1 - tanh(zt.value / p.final_logit_softcap) ^ 2 END
           AS target_slope,
       CASE WHEN p.final_logit_softcap IS NULL OR p.distractor_id IS NULL THEN 1
            ELSE 1 - tanh(zd.value / p.final_logit_softcap) ^ 2 END AS distractor_slope
FROM p
LEFT JOIN uncapped zt ON zt.prompt_id = p.prompt_id AND zt.token_id = p.target_id
LEFT JOIN uncapped zd ON zd.prompt_id = p.prompt_id AND zd.token_id = p.distractor_id
WHERE p.final_logit_softcap IS NULL OR (zt.value IS NOT NULL AND (p.distractor_id IS NULL OR zd.value IS NOT NULL));

-- The target's and the distractor's factors side by side (the distractor's 0 without one), once per
-- distinct (model, target, distractor). A prompt's factor is target_slope * target_value -
-- distractor_slope * distractor_value (prompt_objectives): the slopes differ per prompt under a cap.
CREATE OR REPLACE MACRO pair_factors(t, d) AS TABLE
WITH pairs AS (SELECT DISTINCT model_id, target_id, distractor_id FROM prompt_pairs(t, d)),
factors AS (SELECT * FROM token_factors(t, d))
SELECT pr.model_id, pr.target_id, pr.distractor_id, ft.kind, ft.layer, ft.head, ft.node_index,
       ft.value AS target_value, coalesce(fd.value, 0) AS distractor_value
FROM pairs pr
JOIN factors ft ON ft.model_id = pr.model_id AND ft.token_id = pr.target_id
LEFT JOIN factors fd
  ON fd.model_id = pr.model_id AND fd.token_id = pr.distractor_id AND fd.kind = ft.kind
 AND coalesce(fd.layer, -1) = coalesce(ft.layer, -1) AND coalesce(fd.head, -1) = coalesce(ft.head, -1)
 AND fd.node_index = ft.node_index;

-- Each prompt's pair as a dense pair_id (one per distinct model, target, distractor), and that pair's
-- factors of one kind keyed by one BIGINT: pair_id << 40 | layer << 24 | node_index (head folded into
-- node_index by the caller where it matters). A view joins stored rows to `prompt_pair_ids` on
-- (prompt_id, last token) first, which keeps only the last token, then to `keyed_pair_factors` on the
-- packed key: both build sides stay small (one row per prompt, one per pair and weight element), where
-- joining prompts to factors first builds one row per prompt and weight element (46 M rows for the MLP
-- neurons of 1000 SmolLM2 prompts).
CREATE OR REPLACE MACRO pair_ids(t, d) AS TABLE
SELECT model_id, target_id, distractor_id,
       dense_rank() OVER (ORDER BY model_id, target_id, distractor_id NULLS FIRST)::BIGINT AS pair_id
FROM (SELECT DISTINCT model_id, target_id, distractor_id FROM prompt_pairs(t, d));

CREATE OR REPLACE MACRO prompt_pair_ids(t, d) AS TABLE
SELECT p.prompt_id, p.model_id, p.last_token, p.final_scale, p.target_slope, p.distractor_slope,
       p.post_block_norms, i.pair_id
FROM prompt_objectives(t, d) p
JOIN pair_ids(t, d) i
  ON i.model_id = p.model_id AND i.target_id = p.target_id AND coalesce(i.distractor_id, -1) = coalesce(p.distractor_id, -1);

CREATE OR REPLACE MACRO keyed_pair_factors(t, d, factor_kind) AS TABLE
SELECT i.pair_id, i.model_id, f.layer, f.head, f.node_index,
       (i.pair_id << 40) | (f.layer::BIGINT << 24) | f.node_index AS k, f.target_value, f.distractor_value
FROM pair_factors(t, d) f
JOIN pair_ids(t, d) i
  ON i.model_id = f.model_id AND i.target_id = f.target_id AND coalesce(i.distractor_id, -1) = coalesce(f.distractor_id, -1)
WHERE f.kind = factor_kind;

-- The scale of the norm after block `block` ('attn' or 'mlp') per (prompt, layer, token), in models that
-- norm block outputs: it divides every write of that block at that token. Views LEFT JOIN it and keep a
-- row only where it is found or the model has no such norm (post_block_norms), so a model whose scales
-- were not stored gets no rows rather than undivided ones.
CREATE OR REPLACE MACRO post_block_scales(block) AS TABLE
SELECT prompt_id, layer, token, value::DOUBLE AS value
FROM activations
WHERE dst = block || '_output_layer_norm_scale' AND pass_type = 'forward';
