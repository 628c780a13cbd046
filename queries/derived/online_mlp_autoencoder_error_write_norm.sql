-- dst: online_mlp_autoencoder_error_write_norm
-- node_type: layer
-- needs: online_mlp_autoencoder_error forward (ingest --sae); weights mlp.to_residual
-- formula: ||e[l,t,:] W_out[l]||
-- description: size of the write to the residual stream of the reconstruction error of an SAE on mlp.post_act
SELECT * FROM autoencoder_error_write_norm('online_mlp_autoencoder_error', 'mlp.to_residual', 'online_mlp_autoencoder_error_write_norm')
