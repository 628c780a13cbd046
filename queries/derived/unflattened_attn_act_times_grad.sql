-- dst: unflattened_attn_act_times_grad
-- node_type: attention_head
-- needs: attn.qk_probs forward and backward
-- formula: p[l,q,k,h] * dL/dp[l,q,k,h]
-- description: estimated total effect of attention node (q, k, h) on the objective
SELECT * FROM act_times_grad('attn_qk_probs', 'unflattened_attn_act_times_grad')
