-- dst: final_residual_grad
-- node_type: residual_stream_channel
-- needs: resid.post_mlp backward at the last layer, or (closed form) resid.ln_f.scale forward, a target and weights; with soft-capped logits, resid.post_mlp forward at the last layer
-- formula: dL/dr_mlp[L-1][t,:]; closed form g[T] = P(gain_f * (c_t W_U[:,target] - c_d W_U[:,distractor])) / s_f[T], 0 for t < T; c = 1 - tanh(z/cap)^2 at soft-capped logits z, else 1
-- description: the gradient at the final residual: stored where the backward pass kept it, else closed form
WITH stored AS (
    SELECT a.* FROM activations a JOIN prompts p USING (prompt_id) JOIN models m USING (model_id)
    WHERE a.dst = 'resid_post_mlp' AND a.pass_type = 'backward' AND a.layer = m.n_layers - 1
)
SELECT prompt_id, token, token2, NULL::SMALLINT AS layer, head, node_type, node_index,
       'final_residual_grad'::VARCHAR AS dst, 'backward'::VARCHAR AS pass_type, value
FROM stored
UNION ALL
SELECT f.prompt_id, f.last_token, NULL, NULL, NULL, 'residual_stream_channel'::VARCHAR, f.node_index,
       'final_residual_grad'::VARCHAR, 'backward'::VARCHAR, (f.value / f.final_scale)::FLOAT
FROM pair_join_factors(NULL, NULL, 'residual') f
WHERE f.prompt_id NOT IN (SELECT prompt_id FROM stored)
