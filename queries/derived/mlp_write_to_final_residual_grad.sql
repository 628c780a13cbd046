-- dst: mlp_write_to_final_residual_grad
-- node_type: mlp_neuron
-- needs: mlp.post_act forward; resid.ln_f.scale forward; a target; weights
-- formula: a[l,T,i] * (W_out[l][i,:] . g[T]),  g[T] = P(gain_f * (W_U[:,target] - W_U[:,distractor])) / s_f[T]
-- description: direct effect of the neuron on the target-minus-distractor logit (last token only)
SELECT * FROM mlp_direct_effects(NULL, NULL)
