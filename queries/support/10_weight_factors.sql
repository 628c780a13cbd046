-- Weight-only factors for a pair given at query time (direct_effects in 30_direct_effects.sql). The
-- ingest computes the same factors from the model's tensors into the table direction_factors for each
-- target and distractor it stores (ingest/factors.py); tests hold the two equal. The unembedding
-- column of a token is stored when a prompt uses it as target or distractor (or for every token with
-- `actwh ingest --unembedding all`): asking for another token is an error naming the fix.

-- The error for a token whose unembedding column is not stored.
CREATE OR REPLACE MACRO unembedding_missing(v) AS
'token ' || v || ' has no unembedding column in this warehouse: ingest a prompt with it as --target or '
|| '--distractor, or ingest with --unembedding all';

-- Why the pair (t, d) given at query time cannot be answered, or NULL when it can: a target equal to
-- the distractor (logit(t) - logit(d) is then identically 0), a distractor without a target, or a token
-- whose unembedding column is not stored. t = d = NULL (each prompt's own ingested pair) always can.
CREATE OR REPLACE MACRO pair_problem(t, d) AS TABLE
SELECT CASE
    WHEN t IS NULL AND d IS NOT NULL THEN 'distractor ' || d || ' given without a target: give the target too'
    WHEN t = d THEN 'target and distractor are the same token ' || t || ': logit(target) - logit(distractor) is '
                    || 'identically 0; give two different tokens (or no distractor)'
    WHEN t IS NOT NULL AND NOT EXISTS (SELECT 1 FROM weights WHERE location = 'unembedding' AND col_index = t)
        THEN unembedding_missing(t)
    WHEN d IS NOT NULL AND NOT EXISTS (SELECT 1 FROM weights WHERE location = 'unembedding' AND col_index = d)
        THEN unembedding_missing(d)
END AS problem;

-- The pair (t, d) as one row, or the error of pair_problem. Every macro answering a given pair joins it,
-- so no row is computed for a pair that cannot be answered.
CREATE OR REPLACE MACRO checked_pair(t, d) AS TABLE
SELECT CASE WHEN problem IS NULL THEN t ELSE error(problem) END::INTEGER AS target_id, d::INTEGER AS distractor_id
FROM pair_problem(t, d);

-- No rows for an answerable pair, else the error of pair_problem: the last branch of every macro giving
-- rows for a pair, so that an answer left empty by the checks above raises instead. Each column is the
-- error's value, not a constant, so a filter on the answer (WHERE prompt_id = 0) pushed into this branch
-- cannot prove it empty before it runs: it is evaluated on the one row pair_problem always yields.
CREATE OR REPLACE MACRO pair_refusal(t, d) AS TABLE
SELECT e::INTEGER AS prompt_id, e::SMALLINT AS token, e::SMALLINT AS token2, e::SMALLINT AS layer,
       e::SMALLINT AS head, e::VARCHAR AS node_type, e::INTEGER AS node_index, e::VARCHAR AS dst,
       e::VARCHAR AS pass_type, e::FLOAT AS value
FROM (SELECT error(problem) AS e FROM pair_problem(t, d) WHERE problem IS NOT NULL);

-- The tokens of the pair (t, d) given at query time, per model, whose factors come from the weights: those
-- the table direction_factors does not hold (the ingest stores them for every target and distractor it
-- sees: one 'final_bias' row among them marks a token), or all of them with `recompute`. Both tokens pass checked_pair, so a pair that cannot be answered
-- raises here too. No rows for t = d = NULL.
CREATE OR REPLACE MACRO unstored_tokens(t, d, recompute) AS TABLE
SELECT m.model_id, v.token_id
FROM (SELECT target_id AS token_id FROM checked_pair(t, d) UNION ALL SELECT distractor_id FROM checked_pair(t, d)) v
CROSS JOIN models m
WHERE v.token_id IS NOT NULL
  AND (recompute OR NOT EXISTS (SELECT 1 FROM direction_factors f
                            WHERE f.kind = 'final_bias' AND f.model_id = m.model_id AND f.token_id = v.token_id));

-- u_v = P(gain_f * W_U[:, v]) for each (model, token v) of unstored_tokens: the final-residual gradient of
-- logit v times the final norm's scale at the last token (that scale held constant). P subtracts the mean
-- over channels for LayerNorm models (the Jacobian of mean removal) and is the identity for RMSNorm models.
CREATE OR REPLACE MACRO unembed_directions(t, d, recompute) AS TABLE
WITH gu AS (
    SELECT u.model_id, v.token_id, u.row_index AS channel, g.value::DOUBLE * u.value AS value
    FROM weights u
    JOIN unstored_tokens(t, d, recompute) v ON v.model_id = u.model_id AND u.col_index = v.token_id
    JOIN weights g ON g.model_id = u.model_id AND g.location = 'layer_norm_gain.final' AND g.row_index = u.row_index
    WHERE u.location = 'unembedding'
)
SELECT gu.model_id, gu.token_id, gu.channel,
       gu.value - CASE WHEN m.norm = 'layernorm' THEN avg(gu.value) OVER (PARTITION BY gu.model_id, gu.token_id)
                       ELSE 0 END AS value
FROM gu JOIN models m USING (model_id);

-- u_v as block `block`'s ('attn' or 'mlp') writes see it at each layer: times the gain of the norm after
-- the block where the model norms block outputs (that gain multiplies a write before it joins the
-- residual; such a model's gains are stored whole, so a model without rows has no such norm). Inner joins
-- only, so the planner sees this side as the small one when weight_factors joins it to a weight matrix.
CREATE OR REPLACE MACRO block_directions(t, d, recompute, block) AS TABLE
WITH u AS (SELECT * FROM unembed_directions(t, d, recompute)),
gains AS (SELECT model_id, layer, row_index AS channel, value FROM weights WHERE location = 'layer_norm_gain.post_' || block)
SELECT u.model_id, u.token_id, g.layer, u.channel, u.value * g.value AS value
FROM u JOIN gains g ON g.model_id = u.model_id AND g.channel = u.channel
UNION ALL
SELECT u.model_id, u.token_id, l.layer, u.channel, u.value
FROM u JOIN (SELECT DISTINCT model_id, layer FROM weights WHERE location = block || '.residual_bias') l ON l.model_id = u.model_id
WHERE NOT EXISTS (SELECT 1 FROM gains g WHERE g.model_id = u.model_id);

-- Every weight-side dot product with u_v that a direct effect needs (kinds: see direction_factors), from
-- the weights, for the tokens of unstored_tokens(t, d, recompute): one scan of each weight matrix serves
-- both tokens.
CREATE OR REPLACE MACRO weight_factors(t, d, recompute) AS TABLE
WITH u AS (SELECT * FROM unembed_directions(t, d, recompute)),
ua AS (SELECT * FROM block_directions(t, d, recompute, 'attn')),
um AS (SELECT * FROM block_directions(t, d, recompute, 'mlp'))
SELECT model_id, token_id, 'residual' AS kind, NULL::SMALLINT AS layer, NULL::SMALLINT AS head,
       channel AS node_index, value
FROM u
UNION ALL
SELECT w.model_id, u.token_id, 'mlp', w.layer, NULL, w.row_index, sum(w.value * u.value)
FROM weights w JOIN um u ON u.model_id = w.model_id AND u.layer = w.layer AND u.channel = w.col_index
WHERE w.location = 'mlp.to_residual'
GROUP BY w.model_id, u.token_id, w.layer, w.row_index
UNION ALL
SELECT w.model_id, u.token_id, 'attn', w.layer, w.head, w.row_index, sum(w.value * u.value)
FROM weights w JOIN ua u ON u.model_id = w.model_id AND u.layer = w.layer AND u.channel = w.col_index
WHERE w.location = 'attn.to_residual'
GROUP BY w.model_id, u.token_id, w.layer, w.head, w.row_index
UNION ALL
SELECT w.model_id, u.token_id, 'attn_bias', w.layer, NULL, 0, sum(w.value * u.value)
FROM weights w JOIN ua u ON u.model_id = w.model_id AND u.layer = w.layer AND u.channel = w.row_index
WHERE w.location = 'attn.residual_bias'
GROUP BY w.model_id, u.token_id, w.layer
UNION ALL
SELECT w.model_id, u.token_id, 'mlp_bias', w.layer, NULL, 0, sum(w.value * u.value)
FROM weights w JOIN um u ON u.model_id = w.model_id AND u.layer = w.layer AND u.channel = w.row_index
WHERE w.location = 'mlp.residual_bias'
GROUP BY w.model_id, u.token_id, w.layer
UNION ALL
-- bias_f . W_U[:, v]: the final norm's bias's share of the logit of v
SELECT b.model_id, v.token_id, 'final_bias', NULL, NULL, 0, sum(b.value::DOUBLE * c.value)
FROM weights b
JOIN weights c ON c.model_id = b.model_id AND c.location = 'unembedding' AND c.row_index = b.row_index
JOIN unstored_tokens(t, d, recompute) v ON v.model_id = c.model_id AND c.col_index = v.token_id
WHERE b.location = 'layer_norm_bias.final'
GROUP BY b.model_id, v.token_id;
