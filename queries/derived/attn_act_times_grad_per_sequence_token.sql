-- dst: attn_act_times_grad_per_sequence_token
-- node_type: attention_head
-- needs: attn.qk_probs forward and backward
-- formula: sum_k p[l,q,k,h] * dL/dp[l,q,k,h]
-- description: estimated total effect of each head at each query token
SELECT * FROM per_sequence_token('unflattened_attn_act_times_grad', 'attn_act_times_grad_per_sequence_token')
