-- dst: token_attribution
-- node_type: layer
-- needs: resid.post_emb forward and backward
-- formula: e[t,:] . dL/de[t,:]
-- description: estimated total effect of each token's embedding on the objective
SELECT prompt_id, token, token2, layer, head, 'layer'::VARCHAR AS node_type, 0 AS node_index,
       'token_attribution'::VARCHAR AS dst, pass_type, sum(value)::FLOAT AS value
FROM act_times_grad('resid_post_embedding', 'token_attribution')
GROUP BY prompt_id, token, token2, layer, head, pass_type
