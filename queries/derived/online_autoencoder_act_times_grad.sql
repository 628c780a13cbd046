-- dst: online_autoencoder_act_times_grad
-- node_type: autoencoder_latent
-- needs: online_autoencoder_latent forward and backward (ingest --sae)
-- formula: f[l,t,i] * dL/df[l,t,i]
-- description: estimated total effect on the objective (first-order) of a latent of a residual-stream SAE
SELECT * FROM act_times_grad('online_autoencoder_latent', 'online_autoencoder_act_times_grad')
