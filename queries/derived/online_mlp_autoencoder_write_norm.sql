-- dst: online_mlp_autoencoder_write_norm
-- node_type: mlp_autoencoder_latent
-- needs: online_mlp_autoencoder_latent forward (ingest --sae); weights mlp_autoencoder.to_residual
-- formula: f[l,t,i] * ||w_i||,  w_i the latent's write to the residual stream (decoder row; through W_out or W_O for mlp.post_act or attn.v_out); times the input's std s[l,t] for an SAE that layer-normalises its input
-- description: size of the write to the residual stream of a latent of an SAE on mlp.post_act or resid.delta_mlp
SELECT * FROM autoencoder_write_norm('online_mlp_autoencoder_latent', 'mlp_autoencoder.to_residual', 'online_mlp_autoencoder_input_std', 'online_mlp_autoencoder_write_norm')
