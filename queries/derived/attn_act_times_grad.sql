-- dst: attn_act_times_grad
-- node_type: attention_head
-- needs: as unflattened_attn_act_times_grad
-- formula: unflattened_attn_act_times_grad with token = q(q+1)/2 + k, token2 NULL
-- description: attention act-times-grad indexed by flattened token pair
SELECT * FROM flattened_pairs('unflattened_attn_act_times_grad', 'attn_act_times_grad')
