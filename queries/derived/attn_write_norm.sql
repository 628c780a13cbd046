-- dst: attn_write_norm
-- node_type: attention_head
-- needs: as unflattened_attn_write_norm
-- formula: unflattened_attn_write_norm with token = q(q+1)/2 + k, token2 NULL
-- description: attention write norms indexed by flattened token pair
SELECT * FROM flattened_pairs('unflattened_attn_write_norm', 'attn_write_norm')
