-- dst: online_mlp_autoencoder_act_times_grad
-- node_type: mlp_autoencoder_latent
-- needs: online_mlp_autoencoder_latent forward and backward (ingest --sae)
-- formula: f[l,t,i] * dL/df[l,t,i]
-- description: estimated total effect on the objective (first-order) of a latent of an SAE on mlp.post_act or resid.delta_mlp
SELECT * FROM act_times_grad('online_mlp_autoencoder_latent', 'online_mlp_autoencoder_act_times_grad')
