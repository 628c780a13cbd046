-- dst: unflattened_attn_write_norm
-- node_type: attention_head
-- needs: attn.qk_probs forward; attn.v_write_norm forward; with norms after attention, attn_post_ln.scale forward
-- formula: p[l,q,k,h] * ||v[l,k,kv(h),:] W_O[l][h]||; with a norm after attention p * ||gain_post[l] * (v W_O[l][h])|| / s_post[l,q]
-- description: size of what attention node (q, k, h) writes to the residual stream at q
SELECT p.prompt_id, p.token, p.token2, p.layer, p.head, p.node_type, p.node_index,
       'unflattened_attn_write_norm'::VARCHAR AS dst, p.pass_type, (p.value * n.value / coalesce(s.value, 1))::FLOAT AS value
FROM activations p
JOIN activations n
  ON n.prompt_id = p.prompt_id AND n.layer = p.layer AND n.token = p.token2 AND n.node_index = p.node_index
JOIN prompts pr ON pr.prompt_id = p.prompt_id
JOIN model_switches() m ON m.model_id = pr.model_id
LEFT JOIN post_block_scales('attn') s ON s.prompt_id = p.prompt_id AND s.layer = p.layer AND s.token = p.token
WHERE p.dst = 'attn_qk_probs' AND p.pass_type = 'forward' AND n.dst = 'attn_v_write_norm' AND n.pass_type = 'forward'
  AND (s.value IS NOT NULL OR NOT m.post_block_norms)
