-- dst: resid_delta_mlp_from_mlp_post_act
-- node_type: residual_stream_channel
-- needs: mlp.post_act forward; weights mlp.to_residual
-- formula: sum_i a[l,t,i] W_out[l][i,d]  (no bias)
-- description: the MLP's write to the residual stream rebuilt from its neurons (d_mlp x d_model per token: filter early)
SELECT a.prompt_id, a.token, NULL::SMALLINT AS token2, a.layer, NULL::SMALLINT AS head,
       'residual_stream_channel'::VARCHAR AS node_type, w.col_index AS node_index,
       'resid_delta_mlp_from_mlp_post_act'::VARCHAR AS dst, a.pass_type, sum(a.value * w.value)::FLOAT AS value
FROM activations a
JOIN prompts p USING (prompt_id)
JOIN weights w ON w.model_id = p.model_id AND w.location = 'mlp.to_residual' AND w.layer = a.layer AND w.row_index = a.node_index
WHERE a.dst = 'mlp_post_act' AND a.pass_type = 'forward'
GROUP BY a.prompt_id, a.token, a.layer, w.col_index, a.pass_type
