-- dst: online_residual_mlp_autoencoder_error_write_norm
-- node_type: layer
-- needs: online_residual_mlp_autoencoder_error forward (ingest --sae)
-- formula: ||e[l,t,:]||
-- description: size of the write to the residual stream of the reconstruction error of an SAE on resid.delta_mlp
SELECT * FROM autoencoder_error_write_norm('online_residual_mlp_autoencoder_error', NULL, 'online_residual_mlp_autoencoder_error_write_norm')
