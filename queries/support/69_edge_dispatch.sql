-- The two edge questions over every node kind the edge files build (60_edges.sql: MLP neurons and residual SAE
-- latents as readers, MLP neurons as writers; 62_attention_edges.sql: an attention head's value, query and key
-- sides as readers, attention nodes and the embedding as writers). Here, after them, because a table macro
-- must exist when a macro naming it is created. Each macro's last branch is its one refusal (edge_refusal), so
-- an answer the checks leave empty raises instead; after the node's own checks, both ask edge_writers_problem
-- whether every write the edges sum over was stored.

-- Edges into the downstream subnode (down_dst, down_layer, node): one row per prompt, token and upstream node.
CREATE OR REPLACE MACRO edges_into(down_dst, down_layer, node) AS TABLE
SELECT * FROM residual_in_edges(down_dst, down_layer, node) WHERE down_dst IN ('mlp_post_act', 'online_autoencoder_latent')
UNION ALL SELECT * FROM autoencoder_source_edges(down_dst, down_layer, node) WHERE down_dst = 'mlp_post_act'
UNION ALL SELECT * FROM attention_in_edges(replace(down_dst, 'attn_', ''), down_layer, node)
    WHERE down_dst IN ('attn_value', 'attn_query', 'attn_key')
UNION ALL SELECT * FROM edge_refusal(coalesce(CASE
    WHEN down_dst LIKE 'online%autoencoder_latent'
        THEN (SELECT problem FROM autoencoder_edge_problem(down_dst, down_layer, node))
    WHEN down_dst IN ('attn_value', 'attn_query', 'attn_key')
        THEN (SELECT problem FROM attention_edge_problem(down_dst, down_layer, node, true))
    WHEN down_dst = 'mlp_post_act' THEN (SELECT problem FROM edge_problem(down_dst, down_layer, node, down_layer))
    ELSE 'edges are built into mlp_post_act (MLP neurons), online_autoencoder_latent (latents of SAEs on the '
         || 'residual stream) and attn_value, attn_query, attn_key (an attention head''s value, query and key '
         || 'sides), not ' || coalesce(down_dst, 'NULL') END, (SELECT problem FROM edge_writers_problem())));

-- Edges out of the upstream node (up_dst, up_layer, node) into every downstream subnode that reads its write:
-- the rows of edges_into seen from the upstream side. MLP neurons (60_edges.sql, 62_attention_edges.sql), the
-- value, query and key sides of later attention heads and the latents of later residual SAEs (63_out_edges.sql).
-- An attention node is (attn_qk_probs, layer, head), every query and key; the embedding is
-- (resid_post_embedding, NULL, NULL); a residual SAE's latent (online_autoencoder_latent, layer, latent) reaches
-- the MLP neurons after its site.
CREATE OR REPLACE MACRO edges_from(up_dst, up_layer, node) AS TABLE
SELECT * FROM mlp_out_edges(up_layer, node) WHERE up_dst = 'mlp_post_act'
UNION ALL SELECT * FROM attn_out_edges(up_layer, node) WHERE up_dst = 'attn_qk_probs'
UNION ALL SELECT * FROM embedding_out_edges() WHERE up_dst = 'resid_post_embedding'
UNION ALL SELECT * FROM residual_out_edges(up_dst, up_layer, node)
    WHERE up_dst IN ('mlp_post_act', 'attn_qk_probs', 'resid_post_embedding', 'online_autoencoder_latent')
UNION ALL SELECT * FROM edge_refusal(coalesce(CASE
    WHEN up_dst IN ('attn_qk_probs', 'resid_post_embedding')
        THEN (SELECT problem FROM attention_edge_problem(up_dst, up_layer, node, false))
    -- a neuron of the last layer is read by the latents of an SAE on its block's output, where there is one
    WHEN up_dst = 'mlp_post_act' THEN (SELECT problem FROM edge_problem(up_dst, up_layer, node, up_layer
        + CASE WHEN EXISTS (SELECT 1 FROM autoencoder_sites() WHERE latent_dst = 'online_autoencoder_latent'
                            AND last_mlp >= up_layer) THEN 0 ELSE 1 END))
    WHEN up_dst = 'online_autoencoder_latent' THEN (SELECT problem FROM out_edge_problem(up_dst, up_layer, node))
    ELSE 'edges are built out of mlp_post_act (MLP neurons), attn_qk_probs (attention nodes), '
         || 'resid_post_embedding (the embedding) and online_autoencoder_latent (latents of SAEs on the residual '
         || 'stream), not ' || coalesce(up_dst, 'NULL') END,
    (SELECT problem FROM edge_writers_problem()), (SELECT problem FROM out_edge_problem(up_dst, up_layer, node))));
