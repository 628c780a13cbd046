-- dst: online_autoencoder_error_write_norm
-- node_type: layer
-- needs: online_autoencoder_error forward (ingest --sae)
-- formula: ||e[l,t,:]||
-- description: size of the write to the residual stream of the reconstruction error of a residual-stream SAE
SELECT * FROM autoencoder_error_write_norm('online_autoencoder_error', NULL, 'online_autoencoder_error_write_norm')
