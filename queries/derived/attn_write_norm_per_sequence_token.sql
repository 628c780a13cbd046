-- dst: attn_write_norm_per_sequence_token
-- node_type: attention_head
-- needs: attn.v_out_write_norm forward; with norms after attention, attn_post_ln.scale forward
-- formula: ||o[l,q,h,:] W_O[l][h]||; with a norm after attention ||gain_post[l] * (o W_O[l][h])|| / s_post[l,q]
-- description: size of each head's summed write at each query token
SELECT a.prompt_id, a.token, a.token2, a.layer, a.head, a.node_type, a.node_index,
       'attn_write_norm_per_sequence_token'::VARCHAR AS dst, a.pass_type, (a.value / coalesce(s.value, 1))::FLOAT AS value
FROM activations a
JOIN prompts USING (prompt_id)
JOIN model_switches() m USING (model_id)
LEFT JOIN post_block_scales('attn') s ON s.prompt_id = a.prompt_id AND s.layer = a.layer AND s.token = a.token
WHERE a.dst = 'attn_v_out_write_norm' AND a.pass_type = 'forward' AND (s.value IS NOT NULL OR NOT m.post_block_norms)
