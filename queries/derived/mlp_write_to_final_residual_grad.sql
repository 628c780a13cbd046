-- dst: mlp_write_to_final_residual_grad
-- node_type: mlp_neuron
-- needs: mlp.post_act forward; resid.ln_f.scale forward; a target; weights; with soft-capped logits, resid.post_mlp forward at the last layer; with norms after the MLP, mlp_post_ln.scale forward
-- formula: a[l,T,i] * (W_out[l][i,:] . g[T]),  g[T] = P(gain_f * (c_t W_U[:,target] - c_d W_U[:,distractor])) / s_f[T], c = 1 - (logit/cap)^2 for soft-capped logits (else 1); with a norm after the MLP a * ((gain_post * W_out[i,:]) . g[T]) / s_post[l,T]
-- description: direct effect of the neuron on the target-minus-distractor logit (last token only)
SELECT * FROM mlp_direct_effects(NULL, NULL)
