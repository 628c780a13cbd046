-- dst: mlp_write_norm
-- node_type: mlp_neuron
-- needs: mlp.post_act forward; weights mlp.to_residual; with norms after the MLP, mlp_post_ln.scale forward
-- formula: a[l,t,i] * ||W_out[l][i,:]||  (signed); with a norm after the MLP a[l,t,i] * ||gain_post[l] * W_out[l][i,:]|| / s_post[l,t]
-- description: size of the neuron's write to the residual stream, signed by its activation
SELECT a.prompt_id, a.token, a.token2, a.layer, a.head, a.node_type, a.node_index, 'mlp_write_norm'::VARCHAR AS dst,
       a.pass_type, (a.value * n.value / coalesce(s.value, 1))::FLOAT AS value
FROM activations a
JOIN prompts p USING (prompt_id)
JOIN model_switches() m USING (model_id)
-- one packed key (model, layer, neuron), so the join cannot start with prompts x norms (a row per prompt and neuron)
JOIN (SELECT (model_id::BIGINT << 40) | (layer::BIGINT << 24) | node_index AS k, value FROM mlp_out_norms) n
  ON n.k = (p.model_id::BIGINT << 40) | (a.layer::BIGINT << 24) | a.node_index
LEFT JOIN post_block_scales('mlp') s ON s.prompt_id = a.prompt_id AND s.layer = a.layer AND s.token = a.token
WHERE a.dst = 'mlp_post_act' AND a.pass_type = 'forward' AND (s.value IS NOT NULL OR NOT m.post_block_norms)
