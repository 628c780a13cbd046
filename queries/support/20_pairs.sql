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
  ON s.prompt_id = p.prompt_id AND s.dst = 'resid_ln_f_scale' AND s.pass_type = 'forward' AND s.token = p.n_tokens - 1
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
