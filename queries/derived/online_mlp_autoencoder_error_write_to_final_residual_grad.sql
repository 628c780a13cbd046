-- dst: online_mlp_autoencoder_error_write_to_final_residual_grad
-- node_type: layer
-- needs: online_mlp_autoencoder_error forward (ingest --sae); resid.ln_f.scale forward; a target; weights
-- formula: (e[l,t,:] W_out[l]) . g[T],  g[T] = P(gain_f * (W_U[:,target] - W_U[:,distractor])) / s_f[T]
-- description: direct effect on the target-minus-distractor logit (last token only) of the reconstruction error of an SAE on mlp.post_act
SELECT * FROM autoencoder_error_direct_effects('online_mlp_autoencoder_error', 'mlp', 'online_mlp_autoencoder_error_write_to_final_residual_grad', NULL, NULL)
