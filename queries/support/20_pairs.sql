-- Which target/distractor pair each prompt's direct effects are taken for, and that pair's factors.
-- t = NULL: each prompt's own ingested pair, factors from the materialised direction_factors table.
-- t = a token id: that pair for every prompt, factors computed on the fly from the weights.

CREATE OR REPLACE MACRO prompt_pairs(t, d) AS TABLE
SELECT p.prompt_id, p.model_id, s.token AS last_token,
       CASE WHEN t IS NULL THEN p.target_id ELSE t END AS target_id,
       CASE WHEN t IS NULL THEN p.distractor_id ELSE d END AS distractor_id,
       s.value::DOUBLE AS final_scale
FROM prompts p
JOIN activations s
  ON s.prompt_id = p.prompt_id AND s.dst = 'resid_final_layer_norm_scale' AND s.pass_type = 'forward' AND s.token = p.n_tokens - 1
WHERE (CASE WHEN t IS NULL THEN p.target_id ELSE t END) IS NOT NULL;

-- factors(target) - factors(distractor), once per distinct (model, target, distractor).
CREATE OR REPLACE MACRO pair_factors(t, d) AS TABLE
WITH pairs AS (SELECT DISTINCT model_id, target_id, distractor_id FROM prompt_pairs(t, d)),
factors AS (
    SELECT * FROM direction_factors WHERE t IS NULL
    UNION ALL SELECT * FROM direction_factors_for(t)
    UNION ALL SELECT * FROM direction_factors_for(d)
)
SELECT pr.model_id, pr.target_id, pr.distractor_id, ft.kind, ft.layer, ft.head, ft.node_index,
       ft.value - coalesce(fd.value, 0) AS value
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
SELECT p.prompt_id, p.model_id, p.last_token, p.final_scale, i.pair_id
FROM prompt_pairs(t, d) p
JOIN pair_ids(t, d) i
  ON i.model_id = p.model_id AND i.target_id = p.target_id AND coalesce(i.distractor_id, -1) = coalesce(p.distractor_id, -1);

CREATE OR REPLACE MACRO keyed_pair_factors(t, d, factor_kind) AS TABLE
SELECT i.pair_id, i.model_id, f.layer, f.head, f.node_index,
       (i.pair_id << 40) | (f.layer::BIGINT << 24) | f.node_index AS k, f.value
FROM pair_factors(t, d) f
JOIN pair_ids(t, d) i
  ON i.model_id = f.model_id AND i.target_id = f.target_id AND coalesce(i.distractor_id, -1) = coalesce(f.distractor_id, -1)
WHERE f.kind = factor_kind;
