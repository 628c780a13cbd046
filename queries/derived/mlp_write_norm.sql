-- dst: mlp_write_norm
-- node_type: mlp_neuron
-- needs: mlp.post_act forward; weights mlp.to_residual
-- formula: a[l,t,i] * ||W_out[l][i,:]||  (signed)
-- description: size of the neuron's write to the residual stream, signed by its activation
SELECT a.prompt_id, a.token, a.token2, a.layer, a.head, a.node_type, a.node_index, 'mlp_write_norm'::dst_name AS dst,
       a.pass_type, (a.value * n.value)::FLOAT AS value
FROM activations a
JOIN prompts p USING (prompt_id)
JOIN mlp_out_norms n ON n.model_id = p.model_id AND n.layer = a.layer AND n.node_index = a.node_index
WHERE a.dst = 'mlp_post_act' AND a.pass_type = 'forward'
