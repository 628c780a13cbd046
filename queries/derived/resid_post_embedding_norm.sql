-- dst: resid_post_embedding_norm
-- node_type: layer
-- needs: resid.post_emb forward
-- formula: ||e[t,:]||
-- description: size of the embedding (token plus position) at each token
SELECT * FROM residual_norm('resid_post_embedding', 'resid_post_embedding_norm')
