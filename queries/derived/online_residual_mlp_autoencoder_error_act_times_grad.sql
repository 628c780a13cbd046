-- dst: online_residual_mlp_autoencoder_error_act_times_grad
-- node_type: layer
-- needs: online_residual_mlp_autoencoder_error forward and backward (ingest --sae)
-- formula: sum_c e[l,t,c] * dL/de[l,t,c],  e = x - decode(f) at the site
-- description: estimated total effect on the objective (first-order) of the reconstruction error of an SAE on resid.delta_mlp
SELECT * FROM autoencoder_error_act_times_grad('online_residual_mlp_autoencoder_error', 'online_residual_mlp_autoencoder_error_act_times_grad')
