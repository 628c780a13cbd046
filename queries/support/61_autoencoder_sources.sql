-- Latents of SAEs on the residual stream as upstream nodes of the edges into an MLP neuron (rows of edges_into
-- for mlp_post_act where the warehouse stores such SAEs). Latent i of the SAE at a site before the neuron's MLP
-- writes f[t,i] s[t] D[i,:] at its token, D[i,:] its decoder row as stored ('autoencoder.to_residual'), s the
-- input's std for a layer-normalising SAE (which un-normalises its reconstruction with it), else 1:
--     activation = f s (c1 (D[i] . u1) + c2 (D[i] . u2))     with the neuron's slopes and reads (60_edges.sql).
-- A site before MLP L: the embedding, resid.post_attn of layers up to L, resid.post_mlp of layers before L. The
-- latents (with the SAE's decoder bias and error) decompose the residual at their site a second time: their
-- rows stand beside those of the writes before the site, and the decomposition identity holds for the writes.
CREATE OR REPLACE MACRO autoencoder_source_edges(down_dst, down_layer, j) AS TABLE
WITH u AS MATERIALIZED (SELECT * FROM read_directions(down_dst, down_layer, j)),
sites AS (
    SELECT model_id, layer FROM saes
    WHERE latent_dst = 'online_autoencoder_latent'
      AND (location = 'resid.post_emb' OR (location = 'resid.post_attn' AND layer <= down_layer)
           OR (location = 'resid.post_mlp' AND layer < down_layer))
),
-- each decoder row (weight_vectors) dotted with the reads as lists ordered by residual channel
f AS (
    SELECT w.model_id, w.layer, w.vector_index AS node_index, list_dot_product(w.vector::DOUBLE[], u.u1) AS f1,
           list_dot_product(w.vector::DOUBLE[], u.u2) AS f2
    FROM weight_vectors w
    JOIN sites s ON s.model_id = w.model_id AND s.layer IS NOT DISTINCT FROM w.layer
    JOIN (SELECT model_id, list(u1 ORDER BY channel) AS u1, list(u2 ORDER BY channel) AS u2 FROM u GROUP BY model_id) u
      ON u.model_id = w.model_id
    WHERE w.location = 'autoencoder.to_residual'
)
SELECT l.prompt_id, l.token::SMALLINT AS token, NULL::SMALLINT AS token2, down_dst::VARCHAR AS dst,
       down_layer::SMALLINT AS layer, NULL::SMALLINT AS head, j::INTEGER AS node_index,
       'online_autoencoder_latent'::VARCHAR AS source_dst, l.layer::SMALLINT AS source_layer,
       NULL::SMALLINT AS source_head, l.node_index::INTEGER AS source_node_index, l.token::SMALLINT AS source_token,
       (l.forward * coalesce(s.forward, 1) * (c.c1 * f.f1 + c.c2 * f.f2))::DOUBLE AS activation,
       (c.grad * l.forward * coalesce(s.forward, 1) * (c.c1 * f.f1 + c.c2 * f.f2))::DOUBLE AS attribution
FROM (
    -- the latents first: a warehouse without SAEs (or a prompt without latents) then reads no slopes
    SELECT l.*, p.model_id FROM facts l JOIN prompts p ON p.prompt_id = l.prompt_id
    WHERE l.dst = 'online_autoencoder_latent' AND l.forward IS NOT NULL AND down_dst = 'mlp_post_act'
) l
JOIN f ON f.model_id = l.model_id AND f.layer IS NOT DISTINCT FROM l.layer AND f.node_index = l.node_index
JOIN read_slopes(down_dst, down_layer, j) c ON c.prompt_id = l.prompt_id AND c.token = l.token
LEFT JOIN facts s
  ON s.prompt_id = l.prompt_id AND s.token = l.token AND s.dst = 'online_autoencoder_input_std'
 AND s.layer IS NOT DISTINCT FROM l.layer;
