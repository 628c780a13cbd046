-- Weight-only factors for a pair given at query time (direct_effects in 30_direct_effects.sql). The
-- ingest computes the same factors from the model's tensors into the table direction_factors for each
-- target and distractor it stores (ingest/factors.py); tests hold the two equal. The unembedding
-- column of a token is stored when a prompt uses it as target or distractor (or for every token with
-- `actwh ingest --unembedding all`): asking for another token is an error naming the fix.

-- u_v = P(gain_f * W_U[:, v]) for every model: the final-residual gradient of logit v times the final
-- norm's scale at the last token (that scale held constant). P subtracts the mean over channels for
-- LayerNorm models (the Jacobian of mean removal) and is the identity for RMSNorm models.
CREATE OR REPLACE MACRO unembed_direction(v) AS TABLE
WITH gu AS (
    SELECT u.model_id, u.row_index AS channel, g.value::DOUBLE * u.value AS value
    FROM weights u
    JOIN weights g ON g.model_id = u.model_id AND g.location = 'layer_norm_gain.final' AND g.row_index = u.row_index
    WHERE u.location = 'unembedding' AND u.col_index = v
)
SELECT gu.model_id, gu.channel,
       gu.value - CASE WHEN m.norm = 'layernorm' THEN avg(gu.value) OVER (PARTITION BY gu.model_id) ELSE 0 END AS value
FROM gu JOIN models m USING (model_id);

-- 0 when token v's unembedding column is stored (or v is NULL); otherwise an error naming the fix.
CREATE OR REPLACE MACRO unembedding_stored(v) AS TABLE
SELECT CASE WHEN v IS NOT NULL AND count(*) = 0
            THEN error('token ' || v || ' has no unembedding column in this warehouse: ingest a prompt with it '
                       || 'as --target or --distractor, or ingest with --unembedding all')
            ELSE 0 END AS missing
FROM weights WHERE location = 'unembedding' AND col_index = v;

-- Every weight-side dot product with u_v that a direct effect needs (kinds: see direction_factors).
CREATE OR REPLACE MACRO direction_factors_for(v) AS TABLE
WITH u AS (SELECT *, v::INTEGER AS token_id FROM unembed_direction(v))
SELECT model_id, token_id, 'residual' AS kind, NULL::SMALLINT AS layer, NULL::SMALLINT AS head,
       channel AS node_index, value
FROM u
UNION ALL
SELECT w.model_id, u.token_id, 'mlp', w.layer, NULL, w.row_index, sum(w.value * u.value)
FROM weights w JOIN u ON u.model_id = w.model_id AND u.channel = w.col_index
WHERE w.location = 'mlp.to_residual'
GROUP BY w.model_id, u.token_id, w.layer, w.row_index
UNION ALL
SELECT w.model_id, u.token_id, 'attn', w.layer, w.head, w.row_index, sum(w.value * u.value)
FROM weights w JOIN u ON u.model_id = w.model_id AND u.channel = w.col_index
WHERE w.location = 'attn.to_residual'
GROUP BY w.model_id, u.token_id, w.layer, w.head, w.row_index
UNION ALL
SELECT w.model_id, u.token_id, CASE WHEN w.location = 'attn.residual_bias' THEN 'attn_bias' ELSE 'mlp_bias' END,
       w.layer, NULL, 0, sum(w.value * u.value)
FROM weights w JOIN u ON u.model_id = w.model_id AND u.channel = w.row_index
WHERE w.location IN ('attn.residual_bias', 'mlp.residual_bias')
GROUP BY w.model_id, u.token_id, w.location, w.layer;
