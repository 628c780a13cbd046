-- dst: online_attention_autoencoder_error_write_norm
-- node_type: layer
-- needs: online_attention_autoencoder_error forward (ingest --sae); weights attn.to_residual
-- formula: ||sum_h e[l,t,h,:] W_O[l][h]||
-- description: size of the write to the residual stream of the reconstruction error of an SAE on attn.v_out (hook_z)
SELECT * FROM autoencoder_error_write_norm('online_attention_autoencoder_error', 'attn.to_residual', 'online_attention_autoencoder_error_write_norm')
