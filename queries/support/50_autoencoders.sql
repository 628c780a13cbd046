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
-- The latents' factors w_i . u_v are taken from the weights for each token the pairs name.
CREATE OR REPLACE MACRO autoencoder_direct_effects(source, weight_location, std_dst, out_dst, t, d) AS TABLE
WITH u AS (SELECT model_id, token_id, node_index AS channel, value FROM token_factors(t, d) WHERE kind = 'residual'),
f AS (
    SELECT checked_factor_key(u.model_id, u.token_id, w.layer, w.row_index) AS k, sum(w.value * u.value) AS value
    FROM weights w JOIN u ON u.model_id = w.model_id AND u.channel = w.col_index
    WHERE w.location = weight_location
    GROUP BY u.model_id, u.token_id, w.layer, w.row_index
)
SELECT a.prompt_id, a.token, a.token2, a.layer, a.head, a.node_type, a.node_index, out_dst::VARCHAR AS dst,
       'forward' AS pass_type,
       (a.forward * coalesce(s.value, 1) * (p.target_slope * ft.value - p.distractor_slope * coalesce(fd.value, 0))
        / p.final_scale)::FLOAT AS value
FROM facts a
JOIN prompt_objectives(t, d) p ON p.prompt_id = a.prompt_id AND p.last_token = a.token
JOIN f ft ON ft.k = factor_key(p.model_id, p.target_id, a.layer, a.node_index)
LEFT JOIN f fd ON fd.k = factor_key(p.model_id, p.distractor_id, a.layer, a.node_index)
LEFT JOIN autoencoder_input_std(std_dst) s
  ON s.prompt_id = a.prompt_id AND s.layer IS NOT DISTINCT FROM a.layer AND s.token = a.token
WHERE a.dst = source AND a.forward IS NOT NULL;

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
-- residual-stream sites, 'mlp' (W_out rows) for mlp.post_act, 'attn' (W_O[h] rows) for attn.v_out, each
-- factor met on its key (keyed_token_factors; an 'attn' factor also on its query head).
CREATE OR REPLACE MACRO autoencoder_error_direct_effects(source, factor_kind, out_dst, t, d) AS TABLE
WITH f AS (SELECT * FROM keyed_token_factors(t, d, factor_kind)),
a AS (
    SELECT a.*, p.model_id, p.target_id, p.distractor_id, p.target_slope, p.distractor_slope, p.final_scale,
           CASE WHEN factor_kind = 'residual' THEN NULL ELSE a.layer END AS factor_layer,
           CASE WHEN factor_kind = 'attn' THEN kv_node(a.head, a.node_index, m.n_heads, m.n_kv_heads)
                ELSE a.node_index END AS factor_node
    FROM facts a
    JOIN prompt_objectives(t, d) p ON p.prompt_id = a.prompt_id AND p.last_token = a.token
    JOIN models m ON m.model_id = p.model_id
    WHERE a.dst = source AND a.forward IS NOT NULL
)
SELECT a.prompt_id, a.token, NULL::SMALLINT AS token2, a.layer, NULL::SMALLINT AS head, 'layer'::VARCHAR AS node_type,
       0 AS node_index, out_dst::VARCHAR AS dst, 'forward' AS pass_type,
       (sum(a.forward * (a.target_slope * ft.value - a.distractor_slope * coalesce(fd.value, 0)))
        / any_value(a.final_scale))::FLOAT AS value
FROM a
JOIN f ft ON ft.k = factor_key(a.model_id, a.target_id, a.factor_layer, a.factor_node)
          AND ft.head IS NOT DISTINCT FROM a.head
LEFT JOIN f fd ON fd.k = factor_key(a.model_id, a.distractor_id, a.factor_layer, a.factor_node)
               AND fd.head IS NOT DISTINCT FROM a.head
GROUP BY a.prompt_id, a.token, a.layer, out_dst;

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
