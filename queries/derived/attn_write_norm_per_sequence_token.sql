-- dst: attn_write_norm_per_sequence_token
-- node_type: attention_head
-- needs: attn.v_out_write_norm forward
-- formula: ||o[l,q,h,:] W_O[l][h]||
-- description: size of each head's summed write at each query token
SELECT prompt_id, token, token2, layer, head, node_type, node_index,
       'attn_write_norm_per_sequence_token'::VARCHAR AS dst, pass_type, value
FROM activations
WHERE dst = 'attn_v_out_write_norm' AND pass_type = 'forward'
