-- What a latent of a sparse autoencoder on the residual stream reads: the downstream side of the edges into
-- it (queries/support/60_edges.sql builds the rows). Where latent j of the SAE at a site fires, its value is
-- f = x' . W[:, j] + b[j] (the encoder as stored with `ingest --input-weights all`: 'autoencoder.to_latent'
-- and 'autoencoder.latent_bias', each SAE's conventions folded in by ingest/sae/record.py), x' the site's
-- residual x, divided by its std s (+ 1e-5, the SAE's own epsilon) for an SAE that layer-normalises its
-- input (its std is stored as online_autoencoder_input_std for such SAEs only, and W's columns are centred, so
-- the mean drops out). With s held, as the norms' scales are, d f / d x = W[:, j] / (s + 1e-5) where the
-- latent fires (ReLU, JumpReLU, TopK and the gated SAE's magnitude path all have slope 1 there) and 0 where
-- it does not, so the in-edge activations at a token where it fires sum to f - b[j].
-- Sites: resid.post_emb (layer NULL: the embedding alone writes before it), resid.post_attn L (what MLP L
-- reads) and resid.post_mlp L (the block's output, MLP L's neurons included).

-- Per SAE on the residual stream (model, latent_dst, layer): the last attention and MLP layers that write before
-- its site, -1 where none does.
CREATE OR REPLACE MACRO autoencoder_sites() AS TABLE
SELECT model_id, latent_dst, layer, CASE WHEN location = 'resid.post_emb' THEN -1 ELSE layer END AS last_attn,
       CASE location WHEN 'resid.post_mlp' THEN layer WHEN 'resid.post_attn' THEN layer - 1 ELSE -1 END AS last_mlp
FROM saes
WHERE location IN ('resid.post_emb', 'resid.post_attn', 'resid.post_mlp');

-- The same for the SAE whose latents are (down_dst, down_layer), per model.
CREATE OR REPLACE MACRO autoencoder_reach(down_dst, down_layer) AS TABLE
SELECT model_id, last_attn, last_mlp FROM autoencoder_sites()
WHERE latent_dst = down_dst AND layer IS NOT DISTINCT FROM down_layer;

-- u1 = W[:, j] per model and residual channel (u2 = 0: a latent reads one direction).
CREATE OR REPLACE MACRO autoencoder_read_directions(down_dst, down_layer, j) AS TABLE
SELECT model_id, generate_subscripts(vector, 1) - 1 AS channel, unnest(vector)::DOUBLE AS u1, 0::DOUBLE AS u2
FROM weight_vectors
WHERE location = 'autoencoder.to_latent' AND layer IS NOT DISTINCT FROM down_layer AND vector_index = j
  AND down_dst = 'online_autoencoder_latent';

-- Per prompt and token where latent j fires (its rows are stored where it is non-zero): c1 = 1 / (s + 1e-5)
-- for a layer-normalising SAE, else 1 (activation = c1 (w . u1)), and the stored gradient of the latent.
CREATE OR REPLACE MACRO autoencoder_read_slopes(down_dst, down_layer, j) AS TABLE
SELECT f.prompt_id, p.model_id, f.token, f.layer, f.node_index, f.backward::DOUBLE AS grad,
       1 / coalesce(s.forward::DOUBLE + 1e-5, 1) AS c1, 0::DOUBLE AS c2
FROM facts f
JOIN prompts p ON p.prompt_id = f.prompt_id
LEFT JOIN facts s
  ON s.prompt_id = f.prompt_id AND s.token = f.token AND s.dst = replace(down_dst, '_latent', '_input_std')
 AND s.layer IS NOT DISTINCT FROM f.layer
WHERE f.dst = down_dst AND f.layer IS NOT DISTINCT FROM down_layer AND f.node_index = j AND f.forward > 0;

-- Why edges into latent j of (down_dst, down_layer) cannot be answered, or NULL when they can.
CREATE OR REPLACE MACRO autoencoder_edge_problem(down_dst, down_layer, j) AS TABLE
SELECT CASE
    WHEN down_dst IS DISTINCT FROM 'online_autoencoder_latent'
        THEN 'edges are built into latents of SAEs on the residual stream (online_autoencoder_latent), not '
             || coalesce(down_dst, 'NULL') || ', whose SAE reads a block''s activations or output'
    WHEN NOT EXISTS (SELECT 1 FROM saes WHERE latent_dst = down_dst AND layer IS NOT DISTINCT FROM down_layer)
        THEN 'this warehouse stores no SAE whose latents are ' || down_dst || ' at layer '
             || coalesce(down_layer::VARCHAR, 'NULL (the embedding)') || coalesce(': it has them at layers '
             || (SELECT string_agg(coalesce(layer::VARCHAR, 'NULL'), ', ' ORDER BY layer) FROM saes
                 WHERE latent_dst = down_dst), ': ingest with --sae to splice one in')
    WHEN j IS NULL OR j < 0
         OR j >= (SELECT max(d_sae) FROM saes WHERE latent_dst = down_dst AND layer IS NOT DISTINCT FROM down_layer)
        THEN 'no latent ' || coalesce(j::VARCHAR, 'NULL') || ' in the SAE of ' || down_dst || ' at layer '
             || coalesce(down_layer::VARCHAR, 'NULL')
    WHEN NOT EXISTS (SELECT 1 FROM weights WHERE location = 'autoencoder.to_latent'
                     AND layer IS NOT DISTINCT FROM down_layer)
        THEN 'this warehouse holds no SAE encoders: ingest again with --input-weights all and the same --sae (no '
             || 'prompt is stored twice; the encoders are added)'
    -- (the first case repeated inside the scan: a refusal's subqueries all run, so the edges into an MLP neuron
    -- would scan its own activations here)
    WHEN NOT EXISTS (SELECT 1 FROM facts WHERE down_dst = 'online_autoencoder_latent' AND dst = down_dst
                     AND layer IS NOT DISTINCT FROM down_layer AND node_index = j AND forward > 0)
        THEN 'latent ' || coalesce(down_layer::VARCHAR, 'NULL') || ':' || j || ' of ' || down_dst
             || ' fires at no stored token: every edge into it is 0'
END AS problem;
