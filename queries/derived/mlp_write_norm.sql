-- dst: mlp_write_norm
-- node_type: mlp_neuron
-- needs: mlp.post_act forward; weights mlp.to_residual
-- formula: a[l,t,i] * ||W_out[l][i,:]||  (signed)
-- description: size of the neuron's write to the residual stream, signed by its activation
SELECT a.prompt_id, a.token, a.token2, a.layer, a.head, a.node_type, a.node_index, 'mlp_write_norm'::VARCHAR AS dst,
       a.pass_type, (a.value * n.value)::FLOAT AS value
FROM activations a
JOIN prompts p USING (prompt_id)
-- one packed key (model, layer, neuron), so the join cannot start with prompts x norms (a row per prompt and neuron)
JOIN (SELECT (model_id::BIGINT << 40) | (layer::BIGINT << 24) | node_index AS k, value FROM mlp_out_norms) n
  ON n.k = (p.model_id::BIGINT << 40) | (a.layer::BIGINT << 24) | a.node_index
WHERE a.dst = 'mlp_post_act' AND a.pass_type = 'forward'
