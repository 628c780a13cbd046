-- Scalars of spliced sparse autoencoders (actwh ingest --sae): latents stored where non-zero (dst
-- online_*autoencoder_latent, both passes in a row), their writes to the residual stream as weights
-- ('<prefix>.to_residual' [latent, channel], keyed by layer), and each SAE's error x - decode(f) stored
-- dense at its site. A model holds one SAE per latent node type and layer (table saes), so latents meet
-- their weights on (model, layer, latent).
-- An SAE that layer-normalises its input (OpenAI's TopK autoencoders) un-normalises its reconstruction
-- with the input's std s[l,t] (stored as online_*autoencoder_input_std for such SAEs only): its latent i
-- writes f[l,t,i] * s[l,t] * w_i at token t.

-- The std of a layer-normalising SAE's input per (prompt, layer, token); no rows for any other SAE.
CREATE OR REPLACE MACRO autoencoder_input_std(std_dst) AS TABLE
SELECT prompt_id, layer, token, value::DOUBLE AS value
FROM activations
WHERE dst = std_dst AND pass_type = 'forward';

-- f[l,t,i] * ||w_i|| (times s[l,t] where stored), w_i the latent's write to the residual stream
CREATE OR REPLACE MACRO autoencoder_write_norm(source, weight_location, std_dst, out_dst) AS TABLE
SELECT a.prompt_id, a.token, a.token2, a.layer, a.head, a.node_type, a.node_index, out_dst::VARCHAR AS dst,
       a.pass_type, (a.value * n.value * coalesce(s.value, 1))::FLOAT AS value
FROM activations a
JOIN prompts p USING (prompt_id)
JOIN (SELECT model_id, layer, row_index, sqrt(sum(value::DOUBLE * value)) AS value
      FROM weights WHERE location = weight_location GROUP BY model_id, layer, row_index) n
  ON n.model_id = p.model_id AND n.layer IS NOT DISTINCT FROM a.layer AND n.row_index = a.node_index
LEFT JOIN autoencoder_input_std(std_dst) s
  ON s.prompt_id = a.prompt_id AND s.layer IS NOT DISTINCT FROM a.layer AND s.token = a.token
WHERE a.dst = source AND a.pass_type = 'forward';

-- f[l,T,i] * (w_i . g[T]) (times s[l,T] where stored) for the pair (t, d) (NULL, NULL: each prompt's own),
-- as mlp_direct_effects (soft-capped logits' slopes c_t, c_d applied per prompt: see 30_direct_effects.sql).
-- The latents' factors w_i . (u_t - u_d) are taken from the weights for each pair in the answer.
CREATE OR REPLACE MACRO autoencoder_direct_effects(source, weight_location, std_dst, out_dst, t, d) AS TABLE
WITH p AS (SELECT * FROM prompt_pair_ids(t, d)),
u AS (
    SELECT pair_id, model_id, node_index AS channel, target_value, distractor_value
    FROM keyed_pair_factors(t, d, 'residual')
),
f AS (
    SELECT u.pair_id, w.layer, w.row_index AS latent, sum(w.value * u.target_value) AS target_value,
           sum(w.value * u.distractor_value) AS distractor_value
    FROM weights w JOIN u ON u.model_id = w.model_id AND u.channel = w.col_index
    WHERE w.location = weight_location
    GROUP BY u.pair_id, w.layer, w.row_index
)
SELECT a.prompt_id, a.token, a.token2, a.layer, a.head, a.node_type, a.node_index, out_dst::VARCHAR AS dst,
       a.pass_type,
       (a.value * coalesce(s.value, 1) * (p.target_slope * f.target_value - p.distractor_slope * f.distractor_value)
        / p.final_scale)::FLOAT AS value
FROM activations a
JOIN p ON p.prompt_id = a.prompt_id AND p.last_token = a.token
JOIN f ON f.pair_id = p.pair_id AND f.layer IS NOT DISTINCT FROM a.layer AND f.latent = a.node_index
LEFT JOIN autoencoder_input_std(std_dst) s
  ON s.prompt_id = a.prompt_id AND s.layer IS NOT DISTINCT FROM a.layer AND s.token = a.token
WHERE a.dst = source AND a.pass_type = 'forward';

-- An error's scalars are one per token and layer (node_type 'layer'): the error is one node.

-- e[l,t,:] . dL/de[l,t,:]
CREATE OR REPLACE MACRO autoencoder_error_act_times_grad(source, out_dst) AS TABLE
SELECT prompt_id, token, NULL::SMALLINT AS token2, layer, NULL::SMALLINT AS head, 'layer'::VARCHAR AS node_type,
       0 AS node_index, out_dst::VARCHAR AS dst, 'forward' AS pass_type, sum(forward::DOUBLE * backward)::FLOAT AS value
FROM facts
WHERE dst = source AND forward IS NOT NULL AND backward IS NOT NULL
GROUP BY prompt_id, token, layer, out_dst;

-- ||the error's write to the residual stream||: the error itself on residual-stream sites
-- (weight_location NULL), e W_out or sum_h e[h] W_O[h] on mlp.post_act or attn.v_out.
CREATE OR REPLACE MACRO autoencoder_error_write_norm(source, weight_location, out_dst) AS TABLE
WITH writes AS (
    SELECT prompt_id, token, layer, node_index AS channel, value::DOUBLE AS value
    FROM activations
    WHERE dst = source AND pass_type = 'forward' AND weight_location IS NULL
    UNION ALL
    SELECT a.prompt_id, a.token, a.layer, w.col_index, sum(a.value::DOUBLE * w.value)
    FROM activations a
    JOIN prompts p USING (prompt_id)
    JOIN weights w ON w.model_id = p.model_id AND w.location = weight_location AND w.layer = a.layer
         AND w.head IS NOT DISTINCT FROM a.head AND w.row_index = a.node_index
    WHERE a.dst = source AND a.pass_type = 'forward'
    GROUP BY a.prompt_id, a.token, a.layer, w.col_index
)
SELECT prompt_id, token, NULL::SMALLINT AS token2, layer, NULL::SMALLINT AS head, 'layer'::VARCHAR AS node_type,
       0 AS node_index, out_dst::VARCHAR AS dst, 'forward' AS pass_type, sqrt(sum(value * value))::FLOAT AS value
FROM writes
GROUP BY prompt_id, token, layer, out_dst;

-- The error's direct effect e[l,T,:] . (its write's factor) / s_f[T]: factor_kind 'residual' for
-- residual-stream sites, 'mlp' (W_out rows) for mlp.post_act, 'attn' (W_O[h] rows) for attn.v_out.
CREATE OR REPLACE MACRO autoencoder_error_direct_effects(source, factor_kind, out_dst, t, d) AS TABLE
SELECT a.prompt_id, a.token, NULL::SMALLINT AS token2, a.layer, NULL::SMALLINT AS head, 'layer'::VARCHAR AS node_type,
       0 AS node_index, out_dst::VARCHAR AS dst, a.pass_type,
       (sum(a.value * (p.target_slope * f.target_value - p.distractor_slope * f.distractor_value))
        / any_value(p.final_scale))::FLOAT AS value
FROM activations a
JOIN prompt_pair_ids(t, d) p ON p.prompt_id = a.prompt_id AND p.last_token = a.token
JOIN keyed_pair_factors(t, d, factor_kind) f
  ON f.pair_id = p.pair_id AND f.node_index = a.node_index
 AND (factor_kind = 'residual' OR (f.layer = a.layer AND f.head IS NOT DISTINCT FROM a.head))
WHERE a.dst = source AND a.pass_type = 'forward'
GROUP BY a.prompt_id, a.token, a.layer, a.pass_type, out_dst, factor_kind;

-- No rows where the warehouse stores an SAE, else an error saying none was spliced in (as pair_refusal:
-- every column is the error's value, so no filter on the answer skips it).
CREATE OR REPLACE MACRO sae_refusal() AS TABLE
SELECT e::INTEGER AS prompt_id, e::SMALLINT AS token, e::SMALLINT AS token2, e::SMALLINT AS layer,
       e::SMALLINT AS head, e::VARCHAR AS node_type, e::INTEGER AS node_index, e::VARCHAR AS dst,
       e::VARCHAR AS pass_type, e::FLOAT AS value
FROM (SELECT error(CASE WHEN n = 0 THEN 'this warehouse stores no sparse autoencoder: ingest with --sae to '
                                      || 'splice one in' END) AS e
      FROM (SELECT count(*) AS n FROM saes) WHERE n = 0);

-- Every latent's and error's direct effect for the pair (target, distractor) -- token ids of the
-- prompts' model -- whether or not that pair was ever ingested (the SAE counterpart of direct_effects).
CREATE OR REPLACE MACRO autoencoder_direct_effects_for(target, distractor) AS TABLE
SELECT * FROM autoencoder_direct_effects('online_autoencoder_latent', 'autoencoder.to_residual',
    'online_autoencoder_input_std', 'online_autoencoder_write_to_final_residual_grad', target, distractor)
UNION ALL SELECT * FROM autoencoder_direct_effects('online_mlp_autoencoder_latent', 'mlp_autoencoder.to_residual',
    'online_mlp_autoencoder_input_std', 'online_mlp_autoencoder_write_to_final_residual_grad', target, distractor)
UNION ALL SELECT * FROM autoencoder_direct_effects('online_attention_autoencoder_latent',
    'attention_autoencoder.to_residual', 'online_attention_autoencoder_input_std',
    'online_attention_autoencoder_write_to_final_residual_grad', target, distractor)
UNION ALL SELECT * FROM autoencoder_error_direct_effects('online_autoencoder_error', 'residual',
    'online_autoencoder_error_write_to_final_residual_grad', target, distractor)
UNION ALL SELECT * FROM autoencoder_error_direct_effects('online_mlp_autoencoder_error', 'mlp',
    'online_mlp_autoencoder_error_write_to_final_residual_grad', target, distractor)
UNION ALL SELECT * FROM autoencoder_error_direct_effects('online_residual_mlp_autoencoder_error', 'residual',
    'online_residual_mlp_autoencoder_error_write_to_final_residual_grad', target, distractor)
UNION ALL SELECT * FROM autoencoder_error_direct_effects('online_residual_attention_autoencoder_error', 'residual',
    'online_residual_attention_autoencoder_error_write_to_final_residual_grad', target, distractor)
UNION ALL SELECT * FROM autoencoder_error_direct_effects('online_attention_autoencoder_error', 'attn',
    'online_attention_autoencoder_error_write_to_final_residual_grad', target, distractor)
UNION ALL SELECT * FROM pair_refusal(target, distractor)
UNION ALL SELECT * FROM sae_refusal();
