-- dst: online_attention_autoencoder_write_to_final_residual_grad
-- node_type: attention_autoencoder_latent
-- needs: online_attention_autoencoder_latent forward (ingest --sae); resid.ln_f.scale forward; a target; weights attention_autoencoder.to_residual
-- formula: f[l,T,i] * (w_i . g[T]),  g[T] = P(gain_f * (W_U[:,target] - W_U[:,distractor])) / s_f[T]; times the input's std s[l,T] for an SAE that layer-normalises its input
-- description: direct effect on the target-minus-distractor logit (last token only) of a latent of an SAE on attn.v_out (hook_z) or resid.delta_attn
SELECT * FROM autoencoder_direct_effects('online_attention_autoencoder_latent', 'attention_autoencoder.to_residual', 'online_attention_autoencoder_input_std', 'online_attention_autoencoder_write_to_final_residual_grad', NULL, NULL)
