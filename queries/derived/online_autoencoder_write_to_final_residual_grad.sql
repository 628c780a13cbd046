-- dst: online_autoencoder_write_to_final_residual_grad
-- node_type: autoencoder_latent
-- needs: online_autoencoder_latent forward (ingest --sae); resid.ln_f.scale forward; a target; weights autoencoder.to_residual
-- formula: f[l,T,i] * (w_i . g[T]),  g[T] = P(gain_f * (W_U[:,target] - W_U[:,distractor])) / s_f[T]; times the input's std s[l,T] for an SAE that layer-normalises its input
-- description: direct effect on the target-minus-distractor logit (last token only) of a latent of a residual-stream SAE
SELECT * FROM autoencoder_direct_effects('online_autoencoder_latent', 'autoencoder.to_residual', 'online_autoencoder_input_std', 'online_autoencoder_write_to_final_residual_grad', NULL, NULL)
