-- dst: online_autoencoder_write_norm
-- node_type: autoencoder_latent
-- needs: online_autoencoder_latent forward (ingest --sae); weights autoencoder.to_residual
-- formula: f[l,t,i] * ||w_i||,  w_i the latent's write to the residual stream (decoder row; through W_out or W_O for mlp.post_act or attn.v_out); times the input's std s[l,t] for an SAE that layer-normalises its input
-- description: size of the write to the residual stream of a latent of a residual-stream SAE
SELECT * FROM autoencoder_write_norm('online_autoencoder_latent', 'autoencoder.to_residual', 'online_autoencoder_input_std', 'online_autoencoder_write_norm')
