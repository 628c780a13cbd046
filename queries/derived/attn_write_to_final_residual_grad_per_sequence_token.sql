-- dst: attn_write_to_final_residual_grad_per_sequence_token
-- node_type: attention_head
-- needs: as unflattened_attn_write_to_final_residual_grad
-- formula: (o[l,T,h,:] W_O[l][h]) . g[T] = sum_k unflattened_attn_write_to_final_residual_grad
-- description: direct effect of each head at the last token on the target-minus-distractor logit
SELECT * FROM per_sequence_token('unflattened_attn_write_to_final_residual_grad',
                                 'attn_write_to_final_residual_grad_per_sequence_token')
