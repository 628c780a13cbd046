-- dst: online_attention_autoencoder_act_times_grad
-- node_type: attention_autoencoder_latent
-- needs: online_attention_autoencoder_latent forward and backward (ingest --sae)
-- formula: f[l,t,i] * dL/df[l,t,i]
-- description: estimated total effect on the objective (first-order) of a latent of an SAE on attn.v_out (hook_z) or resid.delta_attn
SELECT * FROM act_times_grad('online_attention_autoencoder_latent', 'online_attention_autoencoder_act_times_grad')
