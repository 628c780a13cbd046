-- Weight-only factors: computed once per model, and once per target or distractor token, by
-- warehouse/ at ingest into the tables mlp_out_norms and direction_factors (schema.sql). The macros are
-- also called directly for a token that was never ingested (see direct_effects in 30_direct_effects.sql).

-- ||W_out[l][i,:]|| per MLP neuron.
CREATE OR REPLACE MACRO mlp_out_norms_for(m) AS TABLE
SELECT model_id, layer, row_index AS node_index, sqrt(sum(value::DOUBLE * value))::FLOAT AS value
FROM weights
WHERE model_id = m AND location = 'mlp.to_residual'
GROUP BY model_id, layer, row_index;

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
