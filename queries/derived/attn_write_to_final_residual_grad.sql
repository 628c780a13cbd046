-- dst: attn_write_to_final_residual_grad
-- node_type: attention_head
-- needs: as unflattened_attn_write_to_final_residual_grad
-- formula: unflattened_attn_write_to_final_residual_grad with token = q(q+1)/2 + k, token2 NULL
-- description: attention direct effects indexed by flattened token pair
SELECT * FROM flattened_pairs('unflattened_attn_write_to_final_residual_grad', 'attn_write_to_final_residual_grad')
