-- dst: mlp_act_times_grad
-- node_type: mlp_neuron
-- needs: mlp.post_act forward and backward
-- formula: a[l,t,i] * dL/da[l,t,i]
-- description: estimated total effect of the neuron on the objective (first-order)
SELECT * FROM act_times_grad('mlp_post_act', 'mlp_act_times_grad')
