-- dst: unflattened_attn_write_norm
-- node_type: attention_head
-- needs: attn.qk_probs forward; attn.v_write_norm forward
-- formula: p[l,q,k,h] * ||v[l,k,kv(h),:] W_O[l][h]||
-- description: size of what attention node (q, k, h) writes to the residual stream at q
SELECT p.prompt_id, p.token, p.token2, p.layer, p.head, p.node_type, p.node_index,
       'unflattened_attn_write_norm'::VARCHAR AS dst, p.pass_type, (p.value * n.value)::FLOAT AS value
FROM activations p
JOIN activations n
  ON n.prompt_id = p.prompt_id AND n.layer = p.layer AND n.token = p.token2 AND n.node_index = p.node_index
WHERE p.dst = 'attn_qk_probs' AND p.pass_type = 'forward' AND n.dst = 'attn_v_write_norm' AND n.pass_type = 'forward'
