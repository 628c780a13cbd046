-- dst: resid_delta_mlp_from_mlp_post_act
-- node_type: residual_stream_channel
-- needs: mlp.post_act forward; weights mlp.to_residual; with norms after the MLP, mlp_post_ln.scale forward
-- formula: sum_i a[l,t,i] W_out[l][i,d]  (no bias); with a norm after the MLP times gain_post[l][d] / s_post[l,t]
-- description: the MLP's write to the residual stream rebuilt from its neurons (d_mlp x d_model per token: filter early)
WITH written AS (
    SELECT a.prompt_id, a.token, a.layer, w.col_index AS node_index, a.pass_type, sum(a.value * w.value) AS value
    FROM activations a
    JOIN prompts p USING (prompt_id)
    JOIN weights w ON w.model_id = p.model_id AND w.location = 'mlp.to_residual' AND w.layer = a.layer AND w.row_index = a.node_index
    WHERE a.dst = 'mlp_post_act' AND a.pass_type = 'forward'
    GROUP BY a.prompt_id, a.token, a.layer, w.col_index, a.pass_type
)
SELECT r.prompt_id, r.token, NULL::SMALLINT AS token2, r.layer, NULL::SMALLINT AS head,
       'residual_stream_channel'::VARCHAR AS node_type, r.node_index,
       'resid_delta_mlp_from_mlp_post_act'::VARCHAR AS dst, r.pass_type,
       (r.value * coalesce(g.value, 1) / coalesce(s.value, 1))::FLOAT AS value
FROM written r
JOIN prompts p USING (prompt_id)
JOIN model_switches() m USING (model_id)
LEFT JOIN weights g
  ON g.model_id = p.model_id AND g.location = 'layer_norm_gain.post_mlp' AND g.layer = r.layer AND g.row_index = r.node_index
LEFT JOIN post_block_scales('mlp') s ON s.prompt_id = r.prompt_id AND s.layer = r.layer AND s.token = r.token
WHERE s.value IS NOT NULL OR NOT m.post_block_norms
